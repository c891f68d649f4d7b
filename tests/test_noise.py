r"""Exact proofs of the resolution of the estimators' noise (no sampling).

Every noise is a function of u ~ U(0, 1) drawn as a pair (w, side), u = w or
1 - w, by `noise.uniform_halves_from_bits`: w = 2^-(k+1) (1 + m 2^-23)
takes 2^23 values (mantissas m) in each binade k = 1..125, each with
probability 2^-k 2^-23, side is a fair bit. So the law of a noise is a finite
sum over at most 2 x 125 x 2^23 atoms, and its tail probabilities can be
computed exactly.

The argument, for the logistic noise (the others are alike). Let n_j be the
side-0 noise (log w - log1p(-w), as computed) of the j-th atom w_j in
increasing order; side 1 gives exactly -n_j. If n is non-decreasing in j
(checked on every atom), then for l >= 0

    P(b = 0) = P(l + noise < 0) = P(side 0, w < w_J) = w_J,

J the first atom with n_J >= -l, exactly (P(w < a) = 2a for every atom a
above the last binade); likewise P(b = 1) = w_J' for l < 0. The threshold
t = -|l| lies between n_{J-1} and n_J, w_J = sigmoid(T_J) with T_J = logit(w_J)
in float64, and log sigmoid has slope in (0, 1), so

    |log P - log sigmoid(t)| <= |T_J - t| <= max(|T_J - n_J|, |T_J - n_{J-1}|).

The supremum over EVERY real l of the relative error of the rare outcome is
therefore bounded by the maximum of that over all atoms (the likely outcome's
relative error is smaller). To avoid a float64 transcendental per atom, the
maximum is bracketed over blocks of atoms: for a block j = a..b, monotonicity
of n and T gives max(T_b - n_{a-1}, n_b - T_a). The noise itself, the
production function, is evaluated on every atom, i.e. on every (w, side) that
`uniform_halves_from_bits` produces; that mapping is checked on hand-built bit
patterns of every binade, and a direct count over hand-built bits checks
P(b = 0) at a few logits without the bracketing argument.

The exponential E = -log u (both tails: side 0 for large E, side 1 for small)
and the Gumbel g = -log E are proved the same way, in the variable in which
the log-probability moves at most one to one (E for P(E > t) = e^-t, log E
for P(E <= t) = 1 - e^-t, g for P(g >= s) = 1 - exp(-e^-s), e^-g for
P(g < s) = exp(-e^-s)).

Cost: the logistic proof evaluates 116 x 2^23 atoms (~10 s on one CPU core);
the exponential and Gumbel proofs run on 18 representative binades by default
and on all of them with REBAR_JAX_FULL_NOISE_PROOF=1 (~25 s more).
"""
import functools
import os

from absl.testing import parameterized
import jax
from jax.extend import random as jex_random
import jax.numpy as jnp
import numpy as np
import pytest

from rebar_jax.estimators import bernoulli
from rebar_jax.estimators import categorical
from rebar_jax.estimators import noise
from rebar_jax.models import categorical_vae
from rebar_jax.models import sbn

M = 2**23  # mantissas per binade
BLOCK = 32  # atoms per bracket: adds at most ~32 * 2^-22 to the bound
TOLERANCE = 1e-5  # relative, for every tail probability below
LN2 = float(np.log(2.0))


# ----------------------------------------------------------------------------
# The noise on every atom, and the exact bounds.
# ----------------------------------------------------------------------------

# name: (side, increasing in w, deepest binade needed, the production function)
# Binade 116 holds w in [2^-117, 2^-116): logit(w) < -80.4, -log w > 80.4.
# Binade 29: -log w in (19.4, 20.1], the largest E whose lower Gumbel tail is
# claimed (P(g < s) for s >= -log 20).
SEQUENCES = {
    "logistic": (0, True, 116, noise.logistic_from_halves),
    "exp_large": (0, False, 116, noise.exponential_from_halves),
    "exp_small": (1, True, 116, noise.exponential_from_halves),
    "gumbel_large": (1, False, 116, noise.gumbel_from_halves),
    "gumbel_small": (0, True, 29, noise.gumbel_from_halves),
}


def _binade(k):
  """w for every mantissa of binade k (k traced)."""
  m = jax.lax.iota(jnp.uint32, M)
  exponent = (126 - k).astype(jnp.uint32)
  return jax.lax.bitcast_convert_type((exponent << 23) | m, jnp.float32)


@functools.partial(jax.jit, static_argnums=1)
def _values(k, name):
  """(monotone within the binade, first value, last value of every block)."""
  side, increasing, _, fn = SEQUENCES[name]
  v = fn(_binade(k), jnp.full((M,), side == 1))
  steps = (v[1:] >= v[:-1]) if increasing else (v[1:] <= v[:-1])
  return jnp.all(steps), v[0], v[BLOCK - 1::BLOCK]


def _truth(name, w, log_w):
  """The exact noise of the atom w (float64), given log w."""
  if name == "logistic":
    return log_w - jnp.log1p(-w)
  if name == "exp_large":
    return -log_w
  if name == "exp_small":
    return -jnp.log1p(-w)
  if name == "gumbel_large":
    return -jnp.log(-jnp.log1p(-w))
  return -jnp.log(-log_w)  # gumbel_small


def _phi(name, x):
  """The variable in which |log P_noise - log P_true| <= |difference|."""
  if name == "exp_small":
    return jnp.log(x)  # P(E <= t) = 1 - e^-t: log F moves less than log t
  if name == "gumbel_small":
    return -jnp.exp(-x)  # log P(g < s) = -e^-s
  return x


@functools.partial(jax.jit, static_argnums=1)
def _block_bound(k, name, block_last, before):
  """max over the binade's blocks of the bracket, float64 (x64 on).

  block_last: the noise at the last atom of every block; before: the noise
  at the atom before the binade's first (the previous binade's last).
  """
  increasing = SEQUENCES[name][1]
  kf = k.astype(jnp.float64)
  first = jax.lax.iota(jnp.float64, M // BLOCK) * BLOCK
  ends = []
  for m in (first, first + BLOCK - 1):
    frac = m * 2.0**-23
    w = jnp.exp2(-(kf + 1.0)) * (1.0 + frac)
    ends.append(_phi(name, _truth(name, w, -(kf + 1.0) * LN2 + jnp.log1p(frac))))
  t_a, t_b = ends
  v_b = _phi(name, block_last.astype(jnp.float64))
  v_before = jnp.concatenate(
      [_phi(name, before.astype(jnp.float64))[None], v_b[:-1]])
  if increasing:
    bound = jnp.maximum(t_b - v_before, v_b - t_a)
  else:
    bound = jnp.maximum(t_a - v_b, v_before - t_b)
  return jnp.max(bound)


def _truth_at(name, w):
  """phi(_truth) at one float64 w, also for the limit w = 1/2."""
  with jax.enable_x64(True):
    w = jnp.float64(w)
    return float(_phi(name, _truth(name, w, jnp.log(w))))


def _phi_at(name, x):
  with jax.enable_x64(True):
    return float(_phi(name, jnp.float64(x)))


def _last_atom(name, k):
  """The noise at the largest w of binade k (one small evaluation)."""
  side, _, _, fn = SEQUENCES[name]
  w = jnp.full((1,), 2.0**-(k + 1) * (2.0 - 2.0**-23), jnp.float32)
  return fn(w, jnp.full((1,), side == 1))[0]


# The logistic noise is proved on every binade (116 x 2^23 atoms, ~10 s). The
# exponential and Gumbel noises (another ~25 s in full) by default on the
# binades where the float32 grid of the noise or of its intermediate terms
# changes: the two ends, where log1p(-w) stops mattering (w ~ 2^-24), and
# where |noise| crosses a power of two (2, 4, ..., 64: binades 2, 5, 11,
# 22-23, 45-46, 91-92); on every binade with REBAR_JAX_FULL_NOISE_PROOF=1.
FULL = os.environ.get("REBAR_JAX_FULL_NOISE_PROOF", "") not in ("", "0")
SUBSET = (1, 2, 3, 5, 11, 12, 22, 23, 24, 25, 26, 29, 45, 46, 91, 92, 115,
          116)


def binades(name):
  """The logistic noise always in full (its claim is for every logit)."""
  deepest = SEQUENCES[name][2]
  if FULL or name == "logistic":
    return tuple(range(1, deepest + 1))
  return tuple(k for k in SUBSET if k <= deepest)


def prove(name: str, ks=None) -> dict:
  """Exact bound on the relative tail error of noise `name` over binades ks.

  Returns a dict: bound (the supremum of |log P_noise - log P_true| over every
  threshold between two atoms of the binades ks, including the one before
  each binade's first atom, except below the deepest binade of the noise, and
  up to the limit w = 1/2 above binade 1), relative (e^bound - 1), and
  first / last: the noise at the deepest binade's first atom and at the last
  atom below 1/2 (the thresholds covered, when ks are all the binades).
  """
  _, increasing, deepest, _ = SEQUENCES[name]
  ks = binades(name) if ks is None else ks
  worst, first_value, last = 0.0, None, None
  for k in sorted(ks, reverse=True):  # increasing w
    monotone, first, block_last = _values(jnp.int32(k), name)
    assert bool(monotone), f"{name}: not monotone in binade {k}"
    if k == deepest:  # thresholds from its first atom up
      before, first_value = first, float(first)
    else:
      before = _last_atom(name, k + 1)
    order = (before <= first) if increasing else (before >= first)
    assert bool(order), f"{name}: not monotone into binade {k}"
    with jax.enable_x64(True):
      worst = max(worst, float(_block_bound(jnp.int32(k), name, block_last,
                                            before)))
    if k == 1:  # the thresholds between the last atom and the limit w = 1/2
      last = float(block_last[-1])
      worst = max(worst, abs(_truth_at(name, 0.5) - _phi_at(name, last)))
  return {"bound": worst, "relative": float(np.expm1(worst)),
          "binades": len(ks), "first": first_value, "last": last}


@pytest.mark.optimized  # exact sums over 2^30 noise values: run-time bound
class ExactResolutionTest(parameterized.TestCase):
  """The bounds: every binade for the logistic noise, see `binades`."""

  def test_logistic_noise_gives_sigmoid_for_every_logit(self):
    # P(b = 1) = sigmoid(l) and P(b = 0) = sigmoid(-l) to 1e-5 relative for
    # every real l in [-80, 80]: the rare outcome's error is bounded here, the
    # likely outcome's is smaller (its probability is at least 1/2).
    r = prove("logistic")
    print(f"logistic: {r}")
    self.assertLessEqual(r["relative"], TOLERANCE)
    self.assertLessEqual(r["first"], -80.0)  # thresholds -|l| down to -80
    self.assertLessEqual(r["last"], 0.0)     # side-0 noise is never positive
    # Side 1 is exactly the negation (the construction's antisymmetry).
    w = _binade(jnp.int32(3))
    np.testing.assert_array_equal(
        noise.logistic_from_halves(w, jnp.ones(M, bool)),
        -noise.logistic_from_halves(w, jnp.zeros(M, bool)))

  def test_exponential_upper_tail(self):
    # P(E > t) = e^-t for t in [log 2 + 2e-9, 80] from side 0: every
    # side-1 E is below that range (the largest is log 2 rounded up).
    r = prove("exp_large")
    other = float(_last_atom("exp_small", 1))
    print(f"E, P(E > t): {r}; largest side-1 E {other!r}")
    self.assertLessEqual(r["relative"], TOLERANCE)
    self.assertGreaterEqual(r["first"], 80.0)
    self.assertLessEqual(other, LN2 + 2e-9)

  def test_exponential_lower_tail(self):
    # P(E <= t) = 1 - e^-t for t in [e^-80, log 2] from side 1: every side-0
    # E is above log 2.
    r = prove("exp_small")
    other = float(_last_atom("exp_large", 1))
    print(f"E, P(E <= t): {r}; smallest side-0 E {other!r}")
    self.assertLessEqual(r["relative"], TOLERANCE)
    self.assertLessEqual(r["first"], np.exp(-80.0))
    self.assertGreater(other, LN2)

  def test_gumbel_upper_tail(self):
    # P(g >= s) = 1 - exp(-e^-s) for s in [-log log 2, 80] from side 1 (the
    # large Gumbels that rare categories need): every side-0 g is below.
    r = prove("gumbel_large")
    other = float(_last_atom("gumbel_small", 1))
    print(f"g, P(g >= s): {r}; largest side-0 g {other!r}")
    self.assertLessEqual(r["relative"], TOLERANCE)
    self.assertGreaterEqual(r["first"], 80.0)
    self.assertLess(other, -np.log(LN2))

  def test_gumbel_lower_tail(self):
    # P(g < s) = exp(-e^-s) for s in [-log 20, -log log 2 - 3e-9] from side
    # 0 (every side-1 g is above). Below -log 20, E = e^-g > 20 and float32
    # rounding of g moves log P(g < s) = -e^-s by up to E |g| 2^-24; that
    # tail holds less than e^-20 of any category's probability (see
    # noise.gumbel_noise).
    r = prove("gumbel_small")
    other = float(_last_atom("gumbel_large", 1))
    print(f"g, P(g < s): {r}; smallest side-1 g {other!r}")
    self.assertLessEqual(r["relative"], TOLERANCE)
    self.assertLessEqual(r["first"], -np.log(20.0))
    self.assertGreaterEqual(other, -np.log(LN2) - 3e-9)


# ----------------------------------------------------------------------------
# The bits -> (w, side) mapping, and a direct count for a few logits.
# ----------------------------------------------------------------------------


def _stream_words(k: int, rng: np.random.Generator, n: int) -> np.ndarray:
  """n random 128-bit streams (4 words) with exactly k - 1 leading zeros."""
  bits = rng.integers(0, 2, size=(n, 128), dtype=np.uint8)
  bits[:, :k - 1] = 0
  if k - 1 < 128:
    bits[:, k - 1] = 1
  words = np.packbits(bits, axis=1).reshape(n, 4, 4)  # big-endian bytes
  return (words.astype(np.uint32) @ (256 ** np.arange(3, -1, -1,
                                                        dtype=np.uint32))).T


class BitsTest(parameterized.TestCase):

  def test_every_binade_mantissa_and_side(self):
    rng = np.random.default_rng(0)
    for k in range(1, 130):  # leading zeros 0..128 (129: all four words zero)
      stream = _stream_words(k, rng, 16)
      last = rng.integers(0, 2**32, size=16, dtype=np.uint32)
      bits = np.concatenate([stream, last[None]])
      w, side = noise.uniform_halves_from_bits(jnp.asarray(bits))
      binade = min(k, 125)
      expected = 2.0**-(binade + 1) * (1.0 + (last & 0x7FFFFF) / 2.0**23)
      np.testing.assert_array_equal(np.asarray(w, np.float64), expected,
                                    err_msg=f"k={k}")
      np.testing.assert_array_equal(side, last >= 2**31)

  def test_range_and_the_words_read(self):
    # All zeros: the last binade, w = 2^-126, the smallest normal float32.
    w, side = noise.uniform_halves_from_bits(jnp.zeros((5, 1), jnp.uint32))
    self.assertEqual(float(w[0]), 2.0**-126)
    self.assertFalse(bool(side[0]))
    # All ones: binade 1, w = 1/2 - 2^-25 < 1/2.
    w, side = noise.uniform_halves_from_bits(
        jnp.full((5, 1), 2**32 - 1, jnp.uint32))
    self.assertEqual(float(w[0]), 0.5 - 2.0**-25)
    self.assertTrue(bool(side[0]))
    # Words after the first nonzero word of the stream are not read.
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2**32, size=(5, 64), dtype=np.uint32)
    bits[0, 32:] = 0  # half the columns read word 1 (nonzero here)
    bits[1, 32:] |= 1
    other = bits.copy()
    other[1:4, :32] = rng.integers(0, 2**32, size=(3, 32), dtype=np.uint32)
    other[2:4, 32:] = rng.integers(0, 2**32, size=(2, 32), dtype=np.uint32)
    for a, b in zip(noise.uniform_halves_from_bits(jnp.asarray(bits)),
                    noise.uniform_halves_from_bits(jnp.asarray(other))):
      np.testing.assert_array_equal(a, b)

  def test_samplers_draw_the_words_of_their_keys(self):
    key = jax.random.key(3)
    data = jax.random.key_data(key)
    # Threefry keys: both halves of Threefry-2x32 blocks on counters 0..N-1.
    words = jex_random.threefry_2x32((data[0], data[1]),
                                     jnp.arange(5 * 1000, dtype=jnp.uint32))
    want = noise.uniform_halves_from_bits(words.reshape(5, 1000))
    for got in (noise.uniform_halves(key, (1000,)),
                noise.uniform_halves(jax.random.key_data(key), (1000,)),
                jax.jit(noise.uniform_halves, static_argnums=1)(
                    key, (1000,))):
      np.testing.assert_array_equal(got[0], want[0])
      np.testing.assert_array_equal(got[1], want[1])
    # Other key types: jax.random.bits.
    rbg = jax.random.key(3, impl="rbg")
    want = noise.uniform_halves_from_bits(
        jax.random.bits(rbg, (5000,), jnp.uint32).reshape(5, 1000))
    np.testing.assert_array_equal(noise.uniform_halves(rbg, (1000,))[0],
                                  want[0])
    # logistic_noise, gumbel_noise and the estimators: the first half of
    # split(key).
    key_u, _ = jax.random.split(key)
    halves = noise.uniform_halves(key_u, (2, 500))
    np.testing.assert_array_equal(noise.logistic_noise(key, (2, 500)),
                                  noise.logistic_from_halves(*halves))
    np.testing.assert_array_equal(noise.gumbel_noise(key, (2, 500)),
                                  noise.gumbel_from_halves(*halves))

  def test_words_look_uniform_and_independent(self):
    # A sanity check of the words behind the noise (the proofs assume i.i.d.
    # uniform words): every bit is 1 half of the time, and the first bits of
    # word 0 and word 4 of one element are uncorrelated, over 2^14 draws of
    # 5 x 64 words.
    keys = jax.random.split(jax.random.key(4), 2**14)
    words = np.asarray(jax.jit(jax.vmap(
        lambda k: noise.random_words(k, 5, (64,))))(keys))
    bits = np.unpackbits(words.view(np.uint8), axis=-1)
    freq = bits.reshape(-1, bits.shape[-1]).mean(axis=0)
    n = bits.size // bits.shape[-1]
    self.assertLess(np.abs(freq - 0.5).max() * 2 * np.sqrt(n), 5.0)
    a = (words[:, 0] >> 31).astype(np.float64).ravel()
    b = (words[:, 4] >> 31).astype(np.float64).ravel()
    self.assertLess(abs(np.corrcoef(a, b)[0, 1]) * np.sqrt(a.size), 5.0)


@functools.partial(jax.jit, static_argnums=1)
def _count_below(stream, side: int, threshold):
  """#{m: logistic_noise_from_bits(stream, mantissa m, side) < threshold}."""
  last = jax.lax.iota(jnp.uint32, M) | jnp.uint32(side << 31)
  bits = jnp.concatenate([jnp.broadcast_to(stream, (4, M)), last[None]])
  return jnp.sum(noise.logistic_noise_from_bits(bits) < threshold)


def _count(k: int, side: int, threshold: float) -> int:
  """_count_below for binade k, from hand-built stream words."""
  stream = np.zeros((4, 1), np.uint32)
  stream[(k - 1) // 32] = np.uint32(1) << np.uint32(31 - (k - 1) % 32)
  return int(_count_below(jnp.asarray(stream), side,
                          jnp.float32(threshold)))


class DirectCountTest(parameterized.TestCase):
  """P(b = 0 | l) summed over the atoms (hand-built bits), for a few logits."""

  @parameterized.parameters(12.0, 17.0, 20.0, 59.5, 80.0)
  def test_rare_outcome_probability(self, l):
    # b = 0 at logit l <=> l + noise < 0: only side-0 noise is negative, and
    # every binade deeper than the one holding sigmoid(-l) lies below -l.
    # b = 1 at logit -l <=> noise >= l: side 1 only (noise = -side 0's).
    target = 1.0 / (1.0 + np.exp(np.float64(l)))  # sigmoid(-l)
    k = int(np.floor(-np.log2(target)))  # 2^-(k+1) <= target < 2^-k
    self.assertEqual((_count(k + 1, 0, -l), _count(k - 1, 0, -l)), (M, 0))
    self.assertEqual((_count(k + 1, 1, l), _count(k - 1, 1, l)), (0, M))
    # P(side) [P(binade > k) + P(binade k) (atoms counted) / 2^23].
    p_zero = 0.5 * 2.0**-k * (1.0 + _count(k, 0, -l) / M)
    p_one = 0.5 * 2.0**-k * (1.0 + (M - _count(k, 1, l)) / M)
    for p in (p_zero, p_one):
      print(f"l={l}: {p:.9e} vs sigmoid(-l) {target:.9e}, relative error "
            f"{p / target - 1:.2e}")
      self.assertLessEqual(abs(p / target - 1.0), TOLERANCE)


class ModelsTest(parameterized.TestCase):

  def test_models_draw_the_estimators_noise(self):
    key = jax.random.key(0)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 2, (4, 6)),
                    jnp.float32)
    model = sbn.SBN(num_layers=2, num_latents=5, data_dim=6)
    params = model.init(jax.random.key(1), x, (jnp.zeros((4, 5)),) * 2)

    @jax.jit
    def sbn_both(params, key):
      bs, _ = sbn.sample_q(model, params, x, key)
      h, hs = x, []
      for l, k in enumerate(jax.random.split(key, 2)):
        logits = model.apply(params, l, h, method=sbn.SBN.encoder_logits)
        h = bernoulli.hard_threshold(
            logits + noise.logistic_noise(k, logits.shape))
        hs.append(h)
      return bs, tuple(hs)

    sampled, rebuilt = sbn_both(params, key)
    np.testing.assert_array_equal(sampled[0], rebuilt[0])
    np.testing.assert_array_equal(sampled[1], rebuilt[1])
    vae = categorical_vae.CategoricalVAE(num_vars=3, num_classes=4,
                                         hidden=(8,), data_dim=6)
    params = vae.init(jax.random.key(1), x, jnp.zeros((4, 3, 4)))

    @jax.jit
    def vae_both(params, key):
      b, _ = categorical_vae.sample_q(vae, params, x, key)
      logits = vae.apply(params, x,
                         method=categorical_vae.CategoricalVAE.encoder_logits)
      (k,) = jax.random.split(key, 1)  # one key per layer, as for the SBN
      return b, categorical.one_hot_argmax(
          logits + noise.gumbel_noise(k, logits.shape))

    sampled, rebuilt = vae_both(params, key)
    np.testing.assert_array_equal(sampled, rebuilt)
