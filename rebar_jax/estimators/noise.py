r"""The noise behind every discrete sample: uniforms at full float32 resolution.

One uniform u ~ U(0, 1) per noise value, drawn as a pair (w, side):
u = w or 1 - w with w uniform on (0, 1/2) at full float32 resolution
(`uniform_halves_from_bits`, from NOISE_WORDS random uint32 words). The
noises of the families are functions of the pair that never round u:

    logistic   logit(u) = log u - log(1 - u)   (`logistic_noise`, Bernoulli),
    Gumbel     g = -log(-log u)                (`gumbel_noise`, categorical),

with log u, log(1 - u) evaluated as log w or log1p(-w) (`split_log`), so both
tails keep the resolution of w. Consequences, proved by exact computation over
every value the noise takes (tests/test_noise.py): P(l + logit(u) >= 0) =
sigmoid(l) and P(l + logit(u) < 0) = sigmoid(-l) to 1e-5 relative for every l
in [-80, 80]; E = -log u has P(E <= t) = 1 - e^-t for t down to e^-80 and
P(E > t) = e^-t for t up to 80, to 1e-5 relative, and so has the upper tail of
g up to 80. A float32 u with 23 random bits (jax.random.uniform, logistic,
gumbel) gets the rarer Bernoulli outcome wrong by 1% at |l| = 12 and makes it
2^-23 for every |l| > 15.9, and makes every g > 15.9 impossible.

`uniform_halves` is the one place the estimators draw this noise (tests patch
it); each family's `noise_and_spare_key` draws its noise from the first split
of a key and returns the second (`logistic_noise_and_spare_key`,
`gumbel_noise_and_spare_key`).
"""
import math
from typing import Sequence

import jax
from jax.extend import random as jex_random
import jax.numpy as jnp

Array = jax.Array
PRNGKey = jax.Array


NOISE_WORDS = 5
"""uint32 words behind one noise value (see `uniform_halves_from_bits`)."""

_MANTISSA = 0x7FFFFF  # the 23 mantissa bits of a float32
_ONE_BITS = 0x3F800000  # the bits of 1.0f
_MAX_BINADE = 125  # w >= 2^-(125 + 1) = 2^-126, the smallest normal float32
_LN2_HI = 0.693145751953125  # ln 2 to 16 bits: e * _LN2_HI is exact, |e| < 2^7
_LN2_LO = 1.428606765330187e-06  # ln 2 - _LN2_HI


def uniform_halves_from_bits(bits: Array) -> tuple[Array, Array]:
  r"""u ~ U(0, 1) as (w, side): u = w (side 0) or u = 1 - w (side 1), exactly.

  Words 0..3 of `bits` are a stream of 128 random bits whose number n of
  leading zeros gives the binade k = min(n + 1, 125) of w, P(k) = 2^-k (the
  last binade also takes the mass of all deeper ones, 2^-124 in all); word 4
  gives the 23 mantissa bits m (bits 0..22) and the side (bit 31):

      w = 2^-(k+1) (1 + m 2^-23)  in [2^-126, 1/2),   side ~ Bernoulli(1/2).

  So w is U(0, 1/2) at the full relative resolution of a float32 (2^-23 in
  every binade down to the smallest NORMAL float: XLA on CPU flushes
  denormals), each value the left end of its cell: P(w < a) = 2a for every
  value a >= 2^-125 that w takes. A float u would round 1 - w to 1 for
  w < 2^-25; the pair keeps both tails of u at this resolution, and the noises
  built from it (`logistic_from_halves`, `gumbel_from_halves`) evaluate
  log u or log(1 - u) as log w or log1p(-w), without cancellation.
  Words after the first nonzero one of the stream are not read.

  Args:
    bits: uint32, shape (NOISE_WORDS, *shape), i.i.d. uniform words.

  Returns:
    (w, side): float32 and bool, shape `shape`.
  """
  bits = jnp.asarray(bits, jnp.uint32)
  clz = lambda x: jax.lax.clz(x).astype(jnp.int32)
  zero = lambda x: (x == 0).astype(jnp.int32)
  n = clz(bits[0]) + zero(bits[0]) * (clz(bits[1]) + zero(bits[1]) * (
      clz(bits[2]) + zero(bits[2]) * clz(bits[3])))
  k = jnp.minimum(n + 1, _MAX_BINADE)
  exponent = (126 - k).astype(jnp.uint32)  # biased: w = 2^(exponent - 127) 1.m
  w = jax.lax.bitcast_convert_type(
      (exponent << 23) | (bits[4] & jnp.uint32(_MANTISSA)), jnp.float32)
  return w, (bits[4] >> 31) == 1


def random_words(key: PRNGKey, num: int, shape: Sequence[int]) -> Array:
  """`num` i.i.d. uniform uint32 words per element, shape (num, *shape).

  For threefry keys (JAX's default) the words are Threefry-2x32 of the key on
  the counters 0..N-1, both halves of every block, through
  `jax.extend.random.threefry_2x32` (JAX's own non-partitionable bits
  scheme): half the hashing of jax.random.bits, which spends a whole block on
  each 32-bit word. Other key types use jax.random.bits. One threefry call,
  drawn flat and reshaped (a multi-axis jax.random.bits compiles about twice
  as slowly on CPU).
  """
  shape = (num,) + tuple(shape)
  size = math.prod(shape)
  if str(jax.random.key_impl(key)) == "threefry2x32" and size < 2**32:
    data = jax.random.key_data(key)
    words = jex_random.threefry_2x32((data[0], data[1]),
                                     jax.lax.iota(jnp.uint32, size))
  else:
    words = jax.random.bits(key, (size,), jnp.uint32)
  return words.reshape(shape)


def uniform_halves(key: PRNGKey,
                   shape: Sequence[int]) -> tuple[Array, Array]:
  """(w, side) of `uniform_halves_from_bits` for u ~ U(0, 1), from `key`.

  `uniform_halves_from_bits` on NOISE_WORDS fresh words per element: the one
  place the estimators draw noise (tests patch it). On CPU, with
  `random_words`' 2.5 threefry blocks per element, the logistic noise of a
  batch-24, 200-unit layer costs about 15 us more than the 23-bit
  jax.random.logistic (one block per element; ~80 us in all).
  """
  return uniform_halves_from_bits(random_words(key, NOISE_WORDS, shape))


def uniform_open(key: PRNGKey, shape: Sequence[int],
                 dtype=jnp.float32) -> Array:
  """u ~ U(0, 1) as one float, never 0 or 1.

  u = w or min(1 - w, 1 - 2^-24) from `uniform_halves`: full resolution below
  1/2, the float grid (spacing 2^-24) above. The estimators use the pair
  (w, side) instead, which keeps the resolution at both ends.
  """
  w, side = uniform_halves(key, shape)
  u = jnp.where(side, jnp.minimum(1.0 - w, 1.0 - 2.0**-24), w)
  return u.astype(dtype)


def split_log(x: Array) -> tuple[Array, Array]:
  """(hi, lo) with log x = hi + lo, for x a positive normal float32.

  x = 2^e m with m in [1, 2): hi = e * ln2_hi is exact and lo = log m +
  e * ln2_lo carries the rest, so fl(hi + lo) is log x rounded once, to within
  a few units in the last place of lo (|lo| < 0.7), even where |log x| ~ 87.
  """
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  e = ((bits >> 23).astype(jnp.int32) - 127).astype(jnp.float32)
  m = jax.lax.bitcast_convert_type(
      (bits & jnp.uint32(_MANTISSA)) | jnp.uint32(_ONE_BITS), jnp.float32)
  return e * _LN2_HI, jnp.log(m) + e * _LN2_LO


# The logistic noise of the Bernoulli family.


def logistic_from_halves(w: Array, side: Array) -> Array:
  r"""logit(u) = log u - log(1 - u), u = (w, side): `uniform_halves_from_bits`.

      logit(u) = +-(log w - log1p(-w))   (+ for side 0),

  with log w from `split_log`: the noise is the exact logit of u rounded about
  once, and it is exactly antisymmetric in the side. Its law: see
  `logistic_noise`.
  """
  hi, lo = split_log(w)
  noise = hi + (lo - jnp.log1p(-w))
  return jnp.where(side, -noise, noise)


def logistic_noise_from_bits(bits: Array) -> Array:
  """`logistic_noise` as a function of its NOISE_WORDS words (for tests)."""
  return logistic_from_halves(*uniform_halves_from_bits(bits))


def logistic_noise(key: PRNGKey, shape: Sequence[int],
                   dtype=jnp.float32) -> Array:
  r"""logit(u), u ~ U(0, 1): the noise behind every estimator's hard sample.

  The Bernoulli estimators (`bernoulli.reinforce`, `muprop`, `concrete`,
  `straight_through`, `rebar`, `relax`, ...) called with `key` all see
  b = H(logits + logistic_noise(key, logits.shape)), so a caller can reproduce
  their sample (e.g. to reuse it for a decoder gradient) without calling them.

  Resolution: P(l + noise >= 0) = sigmoid(l) and P(l + noise < 0) =
  sigmoid(-l), each to within 1e-5 relative (4e-6 at |l| = 80, less below),
  for every real l in [-80, 80]. tests/test_noise.py proves it by exact
  computation over every value the noise takes there (116 binades x 2^23
  mantissas of w, checked monotone). (A float32 u from jax.random.uniform
  has 23 random bits: the rarer outcome is 1% off at |l| = 12 and 2^-23 for
  every |l| > 15.9.) Computed in float32 and cast to `dtype`.
  """
  return logistic_noise_and_spare_key(key, shape, dtype)[0]


def logistic_noise_and_spare_key(key: PRNGKey, shape: Sequence[int],
                                  dtype) -> tuple[Array, PRNGKey]:
  """(`logistic_noise` of key, a spare key for more noise); one split of key.

  One split serves both: XLA does not merge two identical threefry loops.
  """
  key_u, key_rest = jax.random.split(key)
  noise = logistic_from_halves(*uniform_halves(key_u, shape))
  return noise.astype(dtype), key_rest


# The Gumbel noise of the categorical family.


def exponential_from_halves(w: Array, side: Array) -> Array:
  r"""E = -log u ~ Exp(1) for u = (w, side), see `uniform_halves_from_bits`.

      E = -log w  (side 0, u = w: E in (log 2, 87.3]),
      E = -log1p(-w)  (side 1, u = 1 - w: E in [2^-126, log 2)),

  with log w from `split_log`, so both tails of E keep the full relative
  resolution of w: P(E <= t) = 1 - e^-t for small t and
  P(E > t) = e^-t for large t, to 1e-5 relative for e^-80 <= t <= 80.
  """
  hi, lo = split_log(w)
  return jnp.where(side, -jnp.log1p(-w), -(hi + lo))


def gumbel_from_halves(w: Array, side: Array) -> Array:
  """g = -log E, E = `exponential_from_halves(w, side)`: a standard Gumbel.

  log E by `split_log`, rounded about once even where |g| ~ 87 (E ~ 2^-126,
  the largest g that matters for the rarest categories).
  """
  hi, lo = split_log(exponential_from_halves(w, side))
  return -(hi + lo)


def gumbel_noise_from_bits(bits: Array) -> Array:
  """`gumbel_noise` as a function of its NOISE_WORDS words (for tests)."""
  return gumbel_from_halves(*uniform_halves_from_bits(bits))


def gumbel_noise(key: PRNGKey, shape, dtype=jnp.float32) -> Array:
  r"""g ~ Gumbel(0, 1): the noise behind the hard sample of every estimator.

  The categorical estimators (`categorical.reinforce`, `reinforce_loo` (per
  sample), `ars`, `arsm`, `gumbel_softmax`, `straight_through_gumbel`,
  `gumbel_rao`, `rebar`, `relax`, ...) called with `key` all see
  b = one_hot(argmax(log_softmax(l) + gumbel_noise(key, l.shape))).

  Why the two tails of E = e^-g suffice: in the exponential race, b = c iff
  E_c / p_c < M_c = min_{i != c} E_i / p_i, and M_c ~ Exp(1 - p_c) is
  independent of E_c, so

      P(b = c) = E[F(p_c M_c)],   F(t) = P(E <= t) = 1 - e^-t,

  and the law of M_c is that of the survival functions S(t) = P(E_i > t).
  For a category with log p_c >= -80, F is needed at t = p_c M_c down to
  about e^-87 (below, only M_c < e^-7 contributes, less than 1e-6 of P(b = c)),
  and S (through M_c) up to t ~ 80, beyond which e^-t is negligible against
  any p_c >= e^-80; F relative at small t and S relative at large t, each to
  1e-5, give P(b = c) to about 1e-5 relative. Computed in float32 (g's own
  rounding is a relative 2^-24 of |g| <= 88) and cast to `dtype`.
  """
  return gumbel_noise_and_spare_key(key, shape, dtype)[0]


def gumbel_noise_and_spare_key(key: PRNGKey, shape, dtype=jnp.float32
                               ) -> tuple[Array, PRNGKey]:
  """(`gumbel_noise` of key, a spare key for more noise): one split of key."""
  key_u, key_rest = jax.random.split(key)
  g = gumbel_from_halves(*uniform_halves(key_u, shape))
  return g.astype(dtype), key_rest

