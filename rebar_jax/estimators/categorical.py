r"""Gradient estimators for independent categorical latents (one-hot samples).

Every estimator here estimates

    g(l) = d/dl E_{b ~ Cat(softmax(l))}[f(b)],

for logits l of shape (..., C): the leading axes index D = prod(l.shape[:-1])
independent variables, the last axis their C categories. b is the one-hot sample
(float 0/1, shaped like l); relaxed estimators feed f a point of the simplex
instead. Signature, as for the Bernoulli estimators:

    grad = estimator(key, logits, f, **options)   # one draw, shape of logits

All randomness comes from `key`; draw many estimates with
`jax.vmap(estimator, in_axes=(0, None, None))(jax.random.split(key, n), logits, f)`.
Every estimator also takes `noise=`, the `gumbel_noise` of its key drawn
already (a model's chain does, to sample b): the same estimate, without
drawing that noise twice (`generic.sample`).

Shared reparameterisation (Gumbel-max; Jang et al. 2017, Maddison et al. 2017):

    u ~ U(0, 1)^{D x C},   g = -log(-log u),   z = log_softmax(l) + g,
    b = one_hot(argmax_c z_c),

so b ~ Cat(softmax(l)). Every estimator that needs a hard sample draws it this
way from the first split of its key (`gumbel_noise`), so on one key REINFORCE,
REBAR, ARS and ARSM see the same b (REBAR with eta = 0 equals REINFORCE draw
for draw). The same u is the exponential race / Dirichlet augmentation of ARSM:
with eps = -log u ~ Exp(1), pi = eps / sum(eps) = softmax(-g) ~ Dir(1_C) and
b = argmin_c pi_c e^{-l_c} = argmax_c z_c. The score is
d/dl log p(b) = b - softmax(l).

Resolution: u is the pair (w, side) of `bernoulli.uniform_halves_from_bits`
(u = w or 1 - w, w uniform on (0, 1/2) at full float32 resolution), so
E = -log u is -log w or -log1p(-w) and g = -log E, all without rounding u
(`exponential_from_halves`, `gumbel_from_halves`). E's law is exact to 1e-5
relative in both tails, P(E <= t) = 1 - e^-t for t down to e^-80 and
P(E > t) = e^-t for t up to 80, and so is the upper tail of g up to 80
(exact computation over the noise's values in tests/test_noise.py), which is
what a category of probability down to e^-80 needs (see `gumbel_noise`). A
float32 u with 23 random bits, as jax.random.gumbel draws it by default, makes
every g > 15.9 impossible: a category that needs one (log-probability below
about -16 against a dominant one) is drawn with probability 2^-23 or never.

Non-finite logits: every estimator returns an all-NaN estimate (shape of the
logits) when any logit is NaN or +-inf (`_checks.nan_if_nonfinite`), per
member of a vmapped batch.

Half precision: for float16 or bfloat16 logits every estimator computes in
float32 (noise, samples and f's arguments, one-hot or relaxed, are float32)
and returns the logits' dtype (`_checks.float32_inside`; both decorators are
`_checks.estimator`).
"""
import itertools
import sys
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rebar_jax.estimators import _checks
from rebar_jax.estimators import bernoulli
from rebar_jax.estimators import generic

Array = jax.Array
PRNGKey = jax.Array
Fn = Callable[[Array], Array]
RelaxedFn = generic.RelaxedFn
ControlVariate = generic.ControlVariate

# RELAX's parameters, shared with the Bernoulli family: a log temperature and
# an MLP on the flattened z (here D * C inputs).
RelaxParams = generic.RelaxParams
init_relax_params = generic.init_relax_params


# ----------------------------------------------------------------------------
# Noise and reparameterisations.
# ----------------------------------------------------------------------------


# u ~ U(0, 1) on the open interval, shared with the Bernoulli estimators (a
# convenience: the estimators draw (w, side) pairs, see `gumbel_noise`).
uniform_open = bernoulli.uniform_open


def exponential_from_halves(w: Array, side: Array) -> Array:
  r"""E = -log u ~ Exp(1) for u = (w, side), see `bernoulli.uniform_halves_from_bits`.

      E = -log w  (side 0, u = w: E in (log 2, 87.3]),
      E = -log1p(-w)  (side 1, u = 1 - w: E in [2^-126, log 2)),

  with log w from `bernoulli.split_log`, so both tails of E keep the full
  relative resolution of w: P(E <= t) = 1 - e^-t for small t and
  P(E > t) = e^-t for large t, to 1e-5 relative for e^-80 <= t <= 80.
  """
  hi, lo = bernoulli.split_log(w)
  return jnp.where(side, -jnp.log1p(-w), -(hi + lo))


def gumbel_from_halves(w: Array, side: Array) -> Array:
  """g = -log E, E = `exponential_from_halves(w, side)`: a standard Gumbel.

  log E by `bernoulli.split_log`, rounded about once even where |g| ~ 87
  (E ~ 2^-126, the largest g that matters for the rarest categories).
  """
  hi, lo = bernoulli.split_log(exponential_from_halves(w, side))
  return -(hi + lo)


def gumbel_noise_from_bits(bits: Array) -> Array:
  """`gumbel_noise` as a function of its NOISE_WORDS words (for tests)."""
  return gumbel_from_halves(*bernoulli.uniform_halves_from_bits(bits))


def gumbel_noise(key: PRNGKey, shape, dtype=jnp.float32) -> Array:
  r"""g ~ Gumbel(0, 1): the noise behind the hard sample of every estimator.

  `reinforce`, `reinforce_loo` (per sample), `ars`, `arsm`, `gumbel_softmax`,
  `straight_through_gumbel`, `gumbel_rao`, `rebar` and `relax` called with
  `key` all see b = one_hot(argmax(log_softmax(l) + gumbel_noise(key, l.shape))).

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
  return noise_and_spare_key(key, shape, dtype)[0]


def noise_and_spare_key(key: PRNGKey, shape, dtype=jnp.float32
                        ) -> tuple[Array, PRNGKey]:
  """(`gumbel_noise` of key, a spare key for more noise): one split of key."""
  key_u, key_rest = jax.random.split(key)
  g = gumbel_from_halves(*bernoulli._draw_halves(key_u, shape))  # pylint: disable=protected-access
  return g.astype(dtype), key_rest


def log_exponential(u: Array) -> Array:
  """log(-log u), the log of an Exp(1) variable; finite for u in (0, 1).

  It is minus a standard Gumbel variable: g = -log(-log u).
  """
  return jnp.log(-jnp.log(u))


def one_hot_argmax(z: Array) -> Array:
  """one_hot(argmax_c z_c) on the last axis, as float, with no gradient."""
  b = jax.nn.one_hot(jnp.argmax(z, axis=-1), z.shape[-1], dtype=z.dtype)
  return jax.lax.stop_gradient(b)


def score(logits: Array, b: Array) -> Array:
  """d/dl log Cat(b; softmax(l)) = b - softmax(l), per variable."""
  return b - jax.nn.softmax(logits, axis=-1)


def relax_sample(z: Array, temperature: Any) -> Array:
  """sigma_lambda(z) = softmax(z / lambda), the Concrete relaxation of b."""
  return jax.nn.softmax(z / temperature, axis=-1)


# The family seen from a chain of layers: one noise draw per layer, from which
# the hard sample and its relaxation are deterministic functions.

EVENT_NDIM = 1  # the last axis holds a variable's one-hot classes
REPARAMETERISABLE = False  # b is discrete: no pathwise gradient


def noise(key: PRNGKey, shape, dtype=jnp.float32) -> Array:
  """The noise of b ~ Cat(softmax(l)) by Gumbel-max: `gumbel_noise`."""
  return gumbel_noise(key, shape, dtype)


def sample_from_noise(logits: Array, g: Array) -> Array:
  """b = one_hot(argmax(log_softmax(l) + g)) ~ Cat(softmax(l)), no gradient."""
  return one_hot_argmax(jax.nn.log_softmax(logits, axis=-1) + g)


def relaxed_from_noise(logits: Array, g: Array, temperature: Any) -> Array:
  """The Gumbel-softmax relaxation, softmax((log_softmax(l) + g) / lambda)."""
  return relax_sample(jax.nn.log_softmax(logits, axis=-1) + g, temperature)


def mean(logits: Array) -> Array:
  """E[b] = softmax(l) per variable."""
  return jax.nn.softmax(logits, axis=-1)


def z_from_noise(logits: Array, g: Array) -> Array:
  """z = log_softmax(l) + g, whose argmax is the sample."""
  return jax.nn.log_softmax(logits, axis=-1) + g


def conditional_noise(key: PRNGKey, shape, dtype=jnp.float32) -> Array:
  """e = log(-log v), v ~ U(0, 1), the noise of `conditional_gumbel`: -g."""
  return -gumbel_noise(key, shape, dtype)


def _family():
  return sys.modules[__name__]


def conditional_gumbel(logits: Array, b: Array, e: Array) -> Array:
  r"""z~ = g~(v, l, b) ~ p(z | b): the Gumbel-max z conditioned on argmax z = b.

  With p = softmax(l), z = log p + g. Given b = e_k, the maximum z_k is
  Gumbel(log sum_c p_c) = Gumbel(0) and independent of k; each other z_i is
  Gumbel(log p_i) truncated to z_i < z_k. Inverting the CDFs with uniforms v
  (Tucker et al. 2017 and Grathwohl et al. 2018, categorical appendices):

      z~_k = -log(-log v_k),
      z~_i = -log(-log v_i / p_i - log v_k)              (i != k)
           = -logaddexp(log(-log v_i) - log p_i, -z~_k),

  the last form being finite for every v in (0, 1) and every logit.

  Args:
    logits: l, shape (..., C).
    b: one-hot sample, same shape (held fixed: no gradient flows into it).
    e: log(-log v), same shape, v ~ U(0, 1) (`log_exponential(v)`, or
      -`gumbel_noise` at full resolution).

  Returns:
    z~, shape of l, a differentiable function of l with v and b fixed.
  """
  log_p = jax.nn.log_softmax(logits, axis=-1)
  e_top = jnp.sum(b * e, axis=-1, keepdims=True)  # log(-log v_k) = -z~_k
  rest = -jnp.logaddexp(e - log_p, e_top)
  return jnp.where(b > 0, -e_top, rest)


conditional_from_noise = conditional_gumbel  # z~ from (l, b, e)


def tied_noise(logits: Array, z: Array, b: Array) -> Array:
  r"""The e = log(-log v) for which `conditional_gumbel(l, b, e)` equals z.

  Common random numbers (Tucker et al. 2017, App. G.2, in categorical form):
  inverting the formulas in `conditional_gumbel` gives e_k = -z_k and, for
  i != k,

      e_i = log p_i + log(e^{-z_i} - e^{-z_k})
          = log p_i - z_i + log(-expm1(z_i - z_k)).

  The v so defined is U(0, 1)^C given b (z given b has the law of z~), so z~
  stays a valid conditional sample; it equals z in value.
  Held fixed (stop_gradient); a tie z_i = z_k gives e_i = -inf, clamped to the
  most negative float (z~_i = z~_k then, with zero gradient).
  """
  log_p = jax.nn.log_softmax(logits, axis=-1)
  z_top = jnp.sum(b * z, axis=-1, keepdims=True)
  gap = jnp.minimum(z - z_top, 0.0)
  safe_gap = jnp.where(b > 0, -1.0, gap)
  rest = log_p - z + jnp.log(-jnp.expm1(safe_gap))
  e = jnp.where(b > 0, -z_top, rest)
  return jax.lax.stop_gradient(jnp.maximum(e, jnp.finfo(e.dtype).min))


def _sample(key: PRNGKey, logits: Array, noise_: Optional[Array] = None
            ) -> tuple[Array, Array, Array, PRNGKey]:
  """The shared draw: (Gumbel noise g, z = log_softmax(l) + g, b, spare key).

  noise_: the Gumbel noise of key, when the caller has drawn it already.
  """
  g, b, key_rest = generic.sample(_family(), key, logits, noise_)
  return g, z_from_noise(logits, g), b, key_rest


def _prepare(key: Any, logits: Any, f: Fn) -> tuple[Array, Fn]:
  return generic.prepare(_family(), key, logits, f)


# ----------------------------------------------------------------------------
# Score-function estimators.
# ----------------------------------------------------------------------------


@_checks.estimator
def reinforce(key: PRNGKey, logits: Array, f: Fn,
              baseline: Any = 0.0, noise: Optional[Array] = None) -> Array:
  r"""REINFORCE (score function), unbiased for any baseline independent of b.

      g^ = (f(b) - c) (b - softmax(l)),   b ~ Cat(softmax(l)) per variable.

  Args:
    key: PRNG key.
    logits: l, shape (..., C).
    f: b -> scalar, b one-hot shaped like l.
    baseline: c, a scalar or an array broadcastable to l, not depending on b.
    noise: optional, `gumbel_noise(key, l.shape)` drawn already.

  Returns:
    One draw of the estimate, shape of l.

  Reference: Williams (1992).
  """
  return generic.reinforce(_family(), key, logits, f, baseline, noise)


@_checks.estimator
def reinforce_loo(key: PRNGKey, logits: Array, f: Fn,
                  num_samples: int = 2, noise: Optional[Array] = None
                  ) -> Array:
  r"""REINFORCE with the leave-one-out baseline over n samples, unbiased.

      g^ = (1/n) sum_i (f(b_i) - 1/(n-1) sum_{j != i} f(b_j)) (b_i - softmax(l))
         = 1/(n-1) sum_i (f(b_i) - f_bar) (b_i - softmax(l)),

  b_1..b_n i.i.d.; n evaluations of f for one draw of the n-sample estimator.

  Args:
    key: PRNG key.
    logits: l, shape (..., C).
    f: b -> scalar.
    num_samples: n >= 2.
    noise: optional, the Gumbel noise of b_1 (`gumbel_noise(key, l.shape)`).

  Reference: Kool, van Hoof & Welling (2019), "Buy 4 REINFORCE samples, get a
  baseline for free!", ICLR workshop.
  """
  return generic.reinforce_loo(_family(), key, logits, f, num_samples, noise)


# ----------------------------------------------------------------------------
# ARS and ARSM (augment-REINFORCE-swap(-merge)).
# ----------------------------------------------------------------------------


def _swapped_argmax(log_p: Array, g: Array, c: Array, j: Array) -> Array:
  r"""argmax_i (log p_i + g^{c<->j}_i): pseudo actions for the swapped noise.

  g^{c<->j} is g with entries c and j exchanged (in every variable), i.e. the
  Gumbel noise of pi^{c<->j}; the other entries, and so z_i, are unchanged.

  Args:
    log_p, g: (..., C), log-probabilities and the sample's Gumbel noise.
    c, j: integer arrays of one shape S.

  Returns:
    Class indices, shape (*S, ...).
  """
  num_classes = g.shape[-1]
  c, j = jnp.asarray(c), jnp.asarray(j)
  i = jnp.arange(num_classes).reshape((1,) * (c.ndim + g.ndim - 1) + (-1,))
  c_ = c.reshape(c.shape + (1,) * g.ndim)
  j_ = j.reshape(j.shape + (1,) * g.ndim)
  g_by_class = jnp.moveaxis(g, -1, 0)  # (C, ...)
  g_c, g_j = g_by_class[c][..., None], g_by_class[j][..., None]  # (*S, ..., 1)
  g_swapped = jnp.where(i == c_, g_j, jnp.where(i == j_, g_c, g))
  return jnp.argmax(log_p + g_swapped, axis=-1)


def _one_hot(index: Array, num_classes: int, dtype) -> Array:
  return jax.lax.stop_gradient(jax.nn.one_hot(index, num_classes, dtype=dtype))


@_checks.estimator
def ars(key: PRNGKey, logits: Array, f: Fn,
        noise: Optional[Array] = None) -> Array:
  r"""ARS, augment-REINFORCE-swap with a random reference category, unbiased.

  With the augmentation pi_d ~ Dir(1_C) (pi = eps / sum eps, eps = -log u, the
  same u as b) and b_d = argmin_c pi_dc e^{-l_dc}, Yin et al. show
  d/dl_dc E[f] = E[f(b) (1 - C pi_dc)]. Swapping coordinates c and j of every
  pi_d (a measure-preserving map) gives pseudo actions b^{c<->j} and

      g^_dc = (1 - delta_d) [f(b^{c<->j}) - 1/C sum_m f(b^{m<->j})] (1 - C pi_dj),

  one reference j ~ U{1..C} shared by all variables, C evaluations of f
  (b^{j<->j} = b). delta_d = 1 when all pseudo actions b_d^{m<->j} agree: that
  term has zero conditional mean given pi_d, so dropping it keeps the estimator
  unbiased (the paper's rule; static shapes, f is evaluated regardless).

  Shapes: logits (..., C), D = prod of leading axes; returns shape of logits.

  Reference: Yin, Yue & Zhou (2019), "ARSM: Augment-REINFORCE-Swap-Merge
  estimator for gradient backpropagation through categorical variables", ICML,
  (ARS, multivariate form).
  """
  return _ars(key, logits, f, noise, rao_blackwell=False)


def _ars(key: PRNGKey, logits: Array, f: Fn, noise: Optional[Array],
         rao_blackwell: bool) -> Array:
  """`ars`, or `ars_plus` with pi_j replaced by `_partial_means`."""
  logits, f = _prepare(key, logits, f)
  num_classes = logits.shape[-1]
  g, _, _, key_j = _sample(key, logits, noise)
  j = jax.random.randint(key_j, (), 0, num_classes)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  # pseudo[c] = b^{c<->j}; pseudo[j] is the sample b itself.
  pseudo = _swapped_argmax(log_p, g, jnp.arange(num_classes), j)  # (C, ...)
  fs = jax.vmap(f)(_one_hot(pseudo, num_classes, logits.dtype))  # (C,)
  centred = fs - jnp.mean(fs)  # f(b^{c<->j}) - mean_m f(b^{m<->j})
  if rao_blackwell:
    pi_j = _partial_means(g, logits, pseudo, j)  # (...)
  else:
    pi_j = jnp.take(jax.nn.softmax(-g, axis=-1), j, axis=-1)  # (...)
  active = jnp.any(pseudo != pseudo[:1], axis=0).astype(logits.dtype)
  weight = active * (1.0 - num_classes * pi_j)
  return weight[..., None] * centred


@_checks.estimator
def arsm(key: PRNGKey, logits: Array, f: Fn,
         noise: Optional[Array] = None) -> Array:
  r"""ARSM, ARS merged over all reference categories, unbiased.

      g^_dc = (1 - delta_d) sum_j [F_cj - (1/C) sum_m F_mj] (1/C - pi_dj),
      F_cj = f(b^{c<->j}),

  with pi_d, b^{c<->j} as in `ars` (the swap c<->j is applied to every
  variable at once, so F is one symmetric C x C matrix shared by all variables)
  and delta_d = 1 when every pseudo action of variable d equals b_d (the
  paper's shortcut: that variable's term has zero mean given pi_d). F needs
  C(C-1)/2 + 1 evaluations of f (F_cc = f(b)), done with vmap.

  Shapes: logits (..., C), D = prod of leading axes; returns shape of logits.

  Reference: Yin, Yue & Zhou (2019), ICML, the multivariate ARSM estimator
  and Algorithm 1.
  """
  return _arsm(key, logits, f, noise, rao_blackwell=False)


def _arsm(key: PRNGKey, logits: Array, f: Fn, noise: Optional[Array],
          rao_blackwell: bool) -> Array:
  """`arsm`, or `arsm_plus` with each pi_j replaced by `_partial_means`."""
  logits, f = _prepare(key, logits, f)
  num_classes = logits.shape[-1]
  g, _, b, _ = _sample(key, logits, noise)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  rows, cols = np.triu_indices(num_classes, 1)  # static, c < j
  pseudo = _swapped_argmax(log_p, g, rows, cols)  # (P, ...)
  f_pairs = jax.vmap(f)(_one_hot(pseudo, num_classes, logits.dtype))  # (P,)
  f_b = f(b)
  fmat = jnp.full((num_classes, num_classes), f_b, f_b.dtype)
  fmat = fmat.at[rows, cols].set(f_pairs).at[cols, rows].set(f_pairs)
  centred = fmat - jnp.mean(fmat, axis=0, keepdims=True)  # F_cj - Fbar_j
  index = jnp.argmax(b, axis=-1)
  if rao_blackwell:
    # pseudo_all[m, j] = b^{m<->j} (the diagonal is b).
    pseudo_all = jnp.broadcast_to(index, (num_classes,) * 2 + index.shape)
    pseudo_all = pseudo_all.at[rows, cols].set(pseudo).at[cols, rows].set(
        pseudo)
    pi = jax.vmap(_partial_means, in_axes=(None, None, 1, 0), out_axes=-1)(
        g, logits, pseudo_all, jnp.arange(num_classes))  # (..., C)
  else:
    pi = jax.nn.softmax(-g, axis=-1)  # (..., C)
  grad = (1.0 / num_classes - pi) @ centred.T  # sum_j centred[c, j] w[..., j]
  active = jnp.any(pseudo != index, axis=0).astype(logits.dtype)
  return active[..., None] * grad


def _partial_mean_pi(pi: Array, p: Array, pseudo: Array, j: Array) -> Array:
  r"""E[pi_j | pi_{-(j,o)}, pseudo actions], averaged over the partner o != j.

  One variable. Hold every coordinate of pi ~ Dir(1_C) fixed except pi_j = t
  and a partner pi_o = s - t (s = pi_j + pi_o fixed). Dir(1_C) is uniform on
  the simplex, so t is uniform on [0, s]; each pseudo action
  a_m = argmin_i pi^{j<->m}_i / p_i observed for the reference j (m = 1..C)
  keeps its value on an interval of t (the argmin of functions linear in t),
  so given them t is uniform on an interval [lo, hi] of [0, s], and the
  conditional mean is (lo + hi) / 2. Each partner gives a conditional
  expectation of pi_j; their mean is one too.

  Args:
    pi: (C,), the Dirichlet augmentation softmax(-g).
    p: (C,), softmax(l).
    pseudo: (C,) int, pseudo[m] = b^{j<->m} (pseudo[j] = b).
    j: int, the reference category.

  Returns:
    A scalar, E[pi_j | ...] averaged over the C - 1 partners.
  """
  num_classes = pi.shape[-1]
  idx = jnp.arange(num_classes)
  m, i = idx[:, None], idx[None, :]
  # src[m, i]: the coordinate of pi found at position i of pi^{j<->m}.
  src = jnp.where(i == j, m, jnp.where(i == m, j, i))
  p_a = p[pseudo][:, None]  # (C, 1), the chosen pseudo action's probability
  p_i = p[None, :]

  def given_partner(o):
    s = pi[j] + pi[o]
    # Position i of pi^{j<->m} holds c + d t.
    c = jnp.where(src == j, 0.0, jnp.where(src == o, s, pi[src]))
    d = jnp.where(src == j, 1.0, jnp.where(src == o, -1.0, 0.0))
    c_a = jnp.take_along_axis(c, pseudo[:, None], axis=1)
    d_a = jnp.take_along_axis(d, pseudo[:, None], axis=1)
    # a_m stays the argmin while (c_a + d_a t) p_i <= (c_i + d_i t) p_a.
    slope = d_a * p_i - d * p_a
    offset = c_a * p_i - c * p_a
    bound = -offset / jnp.where(slope == 0, 1.0, slope)
    lo = jnp.max(jnp.where(slope < 0, bound, 0.0), initial=0.0)
    hi = jnp.min(jnp.where(slope > 0, bound, s), initial=s)
    lo, hi = jnp.maximum(lo, 0.0), jnp.minimum(hi, s)
    # Rounding can cross the bounds when the draw sits on one: keep pi_j.
    return jnp.where(lo <= hi, 0.5 * (lo + hi), pi[j])

  means = jax.vmap(given_partner)(idx)
  partner = (idx != j).astype(pi.dtype)
  return jnp.sum(partner * means) / (num_classes - 1)


def _partial_means(g: Array, logits: Array, pseudo: Array, j: Array) -> Array:
  """`_partial_mean_pi` for every variable: pseudo (C, ...), returns (...)."""
  num_classes = logits.shape[-1]
  pi = jax.nn.softmax(-g, axis=-1).reshape((-1, num_classes))
  p = jax.nn.softmax(logits, axis=-1).reshape((-1, num_classes))
  pseudo_by_var = jnp.moveaxis(pseudo, 0, -1).reshape((-1, num_classes))
  means = jax.vmap(_partial_mean_pi, in_axes=(0, 0, 0, None))(
      pi, p, pseudo_by_var, j)
  return jax.lax.stop_gradient(means.reshape(logits.shape[:-1]))


@_checks.estimator
def ars_plus(key: PRNGKey, logits: Array, f: Fn,
             noise: Optional[Array] = None) -> Array:
  r"""ARS+, ARS with pi_j integrated out given the pseudo actions, unbiased.

      g^_dc = (1 - delta_d) [f(b^{c<->j}) - 1/C sum_m f(b^{m<->j})]
              (1 - C E[pi_dj | pi_d,-(j,o), b_d^{1<->j}, ..., b_d^{C<->j}]),

  `ars` with pi_dj replaced by its conditional mean given the other
  coordinates but a partner o and given the pseudo actions of reference j
  (uniform on an interval; see `_partial_mean_pi`), averaged over the C - 1
  partners. The f values depend only on the pseudo actions, so this is a
  conditional expectation of ARS: the same mean, never more variance. C
  evaluations of f, as ARS; O(C^3) extra work per variable.

  Shapes: logits (..., C); returns shape of logits.

  Reference: Yin, Yue & Zhou (2019), ARSM, ICML; the Rao-Blackwellised ARS+
  of seed 004 (partial integration of pi_j plus the symmetry rule delta).
  """
  return _ars(key, logits, f, noise, rao_blackwell=True)


@_checks.estimator
def arsm_plus(key: PRNGKey, logits: Array, f: Fn,
              noise: Optional[Array] = None) -> Array:
  r"""ARSM+, ARSM with each pi_j integrated out as in `ars_plus`, unbiased.

      g^_dc = (1 - delta_d) sum_j [F_cj - (1/C) sum_m F_mj]
              (1/C - E[pi_dj | pi_d,-(j,o), b_d^{1<->j}, ..., b_d^{C<->j}]),

  each reference j's term Rao-Blackwellised given its own pseudo actions
  (`_partial_mean_pi`, averaged over partners o != j). Same f evaluations as
  ARSM, C(C-1)/2 + 1; O(C^4) extra work per variable.

  Shapes: logits (..., C); returns shape of logits.

  Reference: Yin, Yue & Zhou (2019), ARSM, ICML; seed 004's ARSM+.
  """
  return _arsm(key, logits, f, noise, rao_blackwell=True)


# ----------------------------------------------------------------------------
# DisARM through the stick-breaking binary chain (coupled estimators).
# ----------------------------------------------------------------------------


def stick_breaking_logits(logits: Array) -> Array:
  r"""alpha_k = log p_k - log sum_{c > k} p_c, k = 0..C-2: shape (..., C-1).

  The stick-breaking chain: z_k ~ Bernoulli(sigmoid(alpha_k)) independent, and
  b = the first k with z_k = 1 (C - 1 when none), has P(b = c) = p_c, since
  sigmoid(alpha_k) = P(b = k | b >= k).
  """
  log_p = jax.nn.log_softmax(logits, axis=-1)
  tail = jax.lax.cumlogsumexp(log_p, axis=log_p.ndim - 1,
                               reverse=True)  # log P(b >= k)
  return log_p[..., :-1] - tail[..., 1:]


def from_stick_breaking(z: Array) -> Array:
  """One-hot b (..., C) of the binary chain z (..., C-1): first k with z_k = 1."""
  none_yet = jnp.cumprod(1.0 - z, axis=-1)  # z_0 = ... = z_k = 0
  before = jnp.concatenate([jnp.ones_like(z[..., :1]), none_yet[..., :-1]],
                           axis=-1)
  return jnp.concatenate([z * before, none_yet[..., -1:]], axis=-1)


def _order(logits: Array, order: str) -> Array:
  """The chain's order of the categories: (..., C) indices, no gradient."""
  if order == "descending":
    return jax.lax.stop_gradient(jnp.argsort(-logits, axis=-1))
  if order == "ascending":
    return jax.lax.stop_gradient(jnp.argsort(logits, axis=-1))
  if order == "none":
    return jnp.broadcast_to(jnp.arange(logits.shape[-1]), logits.shape)
  raise ValueError(f"order must be 'descending', 'ascending' or 'none', got "
                   f"{order!r}.")


def _in_order(x: Array, order: str, logits: Optional[Array] = None,
              inverse: bool = False) -> Array:
  """x (..., C) permuted into the chain's order of `logits` (x's by default)."""
  perm = _order(x if logits is None else logits, order)
  if inverse:
    perm = jnp.argsort(perm, axis=-1)
  return jnp.take_along_axis(x, perm, axis=-1)


def stick_breaking_pair(key: PRNGKey, logits: Array, order: str = "descending",
                        noise: Optional[Array] = None) -> tuple[Array, Array]:
  """The antithetic binary chains (z, z~), each (..., C-1), of `disarm_stick_breaking`.

  sb(z), back in the categories' order, is the Gumbel-max sample of key (or
  of `noise`).
  """
  _, _, b, key_rest = _sample(key, logits, noise)
  alpha = stick_breaking_logits(_in_order(logits, order))
  position = jnp.argmax(_in_order(b, order, logits), axis=-1)[..., None]
  k = jnp.arange(logits.shape[-1] - 1)
  w, side = bernoulli.uniform_halves(key_rest, (2,) + alpha.shape)
  fresh = bernoulli.sample_from_noise(
      alpha, bernoulli.logistic_from_halves(w[0], side[0]).astype(alpha.dtype))
  z = jnp.where(k < position, 0.0, jnp.where(k == position, 1.0, fresh))
  log_v = -exponential_from_halves(w[1], side[1])
  log_p_twin = jnp.where(
      z > 0,
      jnp.log(jnp.maximum(-jnp.expm1(-alpha), 0.0)),  # -inf for alpha <= 0
      jnp.minimum(alpha, 0.0))
  z_twin = (log_v < log_p_twin).astype(alpha.dtype)
  return jax.lax.stop_gradient(z), jax.lax.stop_gradient(z_twin)


def _stop(z: Array) -> Array:
  """The chain position of sb(z): the first k with z_k = 1, C - 1 if none."""
  return jnp.sum(jnp.cumprod(1.0 - z, axis=-1), axis=-1).astype(jnp.int32)


@_checks.estimator
def disarm_stick_breaking(key: PRNGKey, logits: Array, f: Fn,
                          order: str = "descending",
                          rao_blackwellise: bool = False,
                          noise: Optional[Array] = None) -> Array:
  r"""DisARM on the stick-breaking binary chain of each variable, unbiased.

  Each categorical b_d is the binary chain z_d of `stick_breaking_logits`
  alpha_d (categories taken in `order`), so E[f(b)] = E[f(sb(z))] over
  D (C - 1) independent Bernoulli variables. Their antithetic twins z~ share
  the uniforms (u, 1 - u), and DisARM (Dong, Mnih & Tucker 2020) gives

      g^_alpha = 1/2 (f(sb(z)) - f(sb(z~))) (-1)^{z~} 1[z != z~] sigmoid(|alpha|),
      g^_l = (d alpha / d l)^T g^_alpha,

  two evaluations of f per draw, the pair of categorical samples
  (sb(z), sb(z~)) coupled. The first is the Gumbel-max sample of `key` (or of
  the chain's `noise`): given b_d = c, z_dk = 0 for k before c and 1 at c,
  the later z_dk are drawn fresh, and each twin given its z_dk is the
  Bernoulli P(z~ = 1 | z = 1) = max(0, 1 - e^-alpha),
  P(z~ = 1 | z = 0) = min(1, e^alpha) (u uniform below or above sigmoid(alpha)),
  compared in log space.

  With `rao_blackwellise`, each g^_alpha_k is replaced by its conditional
  mean over the bits f does not read (the paper's Rao-Blackwellised
  estimator). With n, m the stop positions of z and z~ (sb's class in chain
  order), sb(z) reads z_k for k <= n only, so

      k <= min(n, m):  the DisARM term above (nonzero at k = min(n, m) only),
      n < k <= m:      1/2 (f(sb(z~)) - f(sb(z))) (z~_k - sigmoid(alpha_k)),
      m < k <= n:      1/2 (f(sb(z)) - f(sb(z~))) (z_k - sigmoid(alpha_k)),
      k > max(n, m):   0,

  the mean of the DisARM term over z_k given z~_k (over both bits for
  k > max(n, m)); the same two evaluations, a lower variance.

  Args:
    key: PRNG key.
    logits: l, shape (..., C).
    f: b -> scalar, b one-hot shaped like l.
    order: "descending" (categories by decreasing probability, the order the
      paper recommends: the chain stops early), "ascending" or "none" (index
      order); unbiased in every order.
    rao_blackwellise: average out the bits beyond each chain's stop.
    noise: optional, `gumbel_noise(key, l.shape)` drawn already.

  Reference: Dong, Mnih & Tucker (2021), "Coupled gradient estimators for
  discrete latent variables", NeurIPS, Sec. 3 (stick-breaking coupling with
  DisARM, and its Rao-Blackwellisation); at C = 2 both are Bernoulli DisARM.
  """
  logits, f = _prepare(key, logits, f)
  alpha, alpha_vjp = jax.vjp(
      lambda l: stick_breaking_logits(_in_order(l, order)), logits)
  alpha = jax.lax.stop_gradient(alpha)
  z, z_twin = stick_breaking_pair(key, logits, order, noise)
  sign = 1.0 - 2.0 * z_twin
  differ = (z != z_twin).astype(alpha.dtype)
  b_of = lambda z_: _in_order(from_stick_breaking(z_), order, logits,
                              inverse=True)
  df = 0.5 * (f(b_of(z)) - f(b_of(z_twin)))
  g_alpha = df * sign * differ * jax.nn.sigmoid(jnp.abs(alpha))
  if rao_blackwellise:
    k = jnp.arange(alpha.shape[-1])
    on = k <= _stop(z)[..., None]  # bit k is read by sb(z)
    on_twin = k <= _stop(z_twin)[..., None]
    p = jax.nn.sigmoid(alpha)
    g_alpha = jnp.where(
        on & on_twin, g_alpha,
        jnp.where(on, df * (z - p), jnp.where(on_twin, -df * (z_twin - p),
                                              0.0)))
  return alpha_vjp(g_alpha.astype(alpha.dtype))[0]


def disarm_stick_breaking_rb(key: PRNGKey, logits: Array, f: Fn,
                             order: str = "descending",
                             noise: Optional[Array] = None) -> Array:
  """`disarm_stick_breaking` with rao_blackwellise=True: unbiased, 2 f calls."""
  return disarm_stick_breaking(key, logits, f, order=order,
                               rao_blackwellise=True, noise=noise)


def coupled_importance_weights(logits: Array, order: str = "ascending"
                               ) -> Array:
  r"""log w_n = log q(b) q(b~) / P(b, b~) of the antithetic chain pair, (..., C-1).

  For the pair of `stick_breaking_pair` whose first difference is at chain
  position n (min of the two stops), with p_k = sigmoid(alpha_k): both chains
  pass the bits k < n at 0 together (probability 1 - 2 p_k under (u, 1 - u)),
  differ at n (min(p_n, 1 - p_n)) and continue independently, so

      w_n = prod_{k < n} (1 - p_k)^2 / (1 - 2 p_k) * sigmoid(|alpha_n|),

  with (1 - p)^2 / (1 - 2 p) = (1 - p) / (1 - e^alpha) in log space. A pair
  stopping after a bit with p_k >= 1/2 has probability 0 under the coupling
  (its weight is set to 0 here); in "ascending" order p_k <= 1/3 for
  k < C - 2, so every pair of distinct classes has positive probability.
  """
  alpha = stick_breaking_logits(_in_order(logits, order))
  log_ratio = jnp.where(
      alpha < 0, -jax.nn.softplus(alpha) - jnp.log(-jnp.expm1(
          jnp.minimum(alpha, -1e-30))), 0.0)
  before = jnp.cumsum(log_ratio, axis=-1) - log_ratio
  return before + jax.nn.log_sigmoid(jnp.abs(alpha))


@_checks.estimator
def disarm_stick_breaking_iw(key: PRNGKey, logits: Array, f: Fn,
                             order: str = "ascending",
                             noise: Optional[Array] = None) -> Array:
  r"""The importance-weighted coupled estimator on the stick-breaking pair.

  For b, b~ independent draws of q = Cat(softmax(l)),
  1/2 (f(b) - f(b~)) (grad log q(b) - grad log q(b~)) is unbiased (REINFORCE
  with the other sample as baseline, halved and symmetrised). Importance
  sampling it from the antithetic stick-breaking coupling P(b, b~) of
  `stick_breaking_pair`:

      g^_l = 1/2 w(b, b~) (f(b) - f(b~)) (b - b~),
      w = q(b) q(b~) / P(b, b~)   (`coupled_importance_weights`, per variable),

  since grad_l log q(b) = b - softmax(l). Unbiased when P(b, b~) > 0 for
  every pair of distinct classes, which the "ascending" chain order ensures;
  in "descending" order a first class of probability >= 1/2 makes every pair
  that skips it impossible, and the estimator is biased (tested). Per variable
  d only its own pair is reweighted: the other variables' pairs enter through
  their marginals, which the coupling keeps. Two evaluations of f.

  Args:
    key: PRNG key.
    logits: l, shape (..., C).
    f: b -> scalar, b one-hot shaped like l.
    order: "ascending" (the unbiased order), "descending" or "none".
    noise: optional, `gumbel_noise(key, l.shape)` drawn already.

  Reference: Dong, Mnih & Tucker (2021), "Coupled gradient estimators for
  discrete latent variables", NeurIPS, Sec. 3 (the importance-sampling
  derivation of DisARM); at C = 2 it is Bernoulli DisARM.
  """
  logits, f = _prepare(key, logits, f)
  z, z_twin = stick_breaking_pair(key, logits, order, noise)
  b_of = lambda z_: _in_order(from_stick_breaking(z_), order, logits,
                              inverse=True)
  b, b_twin = b_of(z), b_of(z_twin)
  first = jnp.minimum(jnp.minimum(_stop(z), _stop(z_twin)),
                      logits.shape[-1] - 2)[..., None]
  log_w = jnp.take_along_axis(coupled_importance_weights(logits, order),
                              first, axis=-1)
  w = jax.lax.stop_gradient(jnp.exp(log_w))
  df = 0.5 * (f(b) - f(b_twin))
  return (df * w * (b - b_twin)).astype(logits.dtype)


def carms_orders(num_classes: int) -> np.ndarray:
  """The class orders of CARMS's inverse-CDF coupling, (C (C - 1) / 2, C).

  One per pair a < b: a first, b last, the other classes ascending between.
  """
  _checks.check_int("num_classes", num_classes, 2)
  orders = []
  for a, b in itertools.combinations(range(num_classes), 2):
    middle = [c for c in range(num_classes) if c not in (a, b)]
    orders.append([a, *middle, b])
  return np.asarray(orders, np.int32)


def _order_intervals(p: Array, orders: np.ndarray) -> tuple[Array, Array]:
  """(L, R), each (..., P, C): class c's interval [L, R) in order o's CDF."""
  p_o = p[..., orders]                                   # (..., P, C) by position
  right_o = jnp.cumsum(p_o, axis=-1)
  positions = np.argsort(orders, axis=-1)                # position of class c
  take = lambda x: jnp.take_along_axis(
      x, jnp.broadcast_to(positions, x.shape), axis=-1)
  right = take(right_o)
  return right - take(p_o), right


def _dirichlet_copula_cdf(x: Array, y: Array, num_samples: int) -> Array:
  """P(u_i <= x, u_j <= y) = max(0, x^(1/m) + y^(1/m) - 1)^m, m = K - 1."""
  m = num_samples - 1
  return jnp.maximum(x ** (1.0 / m) + y ** (1.0 / m) - 1.0, 0.0) ** m


def carms_joint(logits: Array, num_samples: int) -> Array:
  r"""P(z_i = a, z_j = b) of two of CARMS's K coupled samples, (..., C, C).

  The mean over the orders o (`carms_orders`) of the copula's mass on the
  rectangle [L_a, R_a) x [L_b, R_b) of o's inverse-CDF intervals:
  C2(R_a, R_b) - C2(L_a, R_b) - C2(R_a, L_b) + C2(L_a, L_b), with C2 the
  Dirichlet copula's bivariate CDF. Rows sum to p = softmax(l).
  """
  p = jax.nn.softmax(logits, axis=-1)
  lo, hi = _order_intervals(p, carms_orders(p.shape[-1]))
  c2 = lambda x, y: _dirichlet_copula_cdf(
      x[..., :, None], y[..., None, :], num_samples)
  rect = c2(hi, hi) - c2(lo, hi) - c2(hi, lo) + c2(lo, lo)
  return jnp.mean(jnp.maximum(rect, 0.0), axis=-3)


def carms_samples(key: PRNGKey, logits: Array, num_samples: int,
                  noise: Optional[Array] = None) -> Array:
  r"""K one-hot samples of CARMS's coupling, (K, ..., C); the first is the chain's.

  Per variable: an order o uniform over `carms_orders`, and uniforms
  u_1..u_K from the Dirichlet copula (d ~ Dir(1_K), u_k = (1 - d_k)^(K-1);
  Dimitriev & Zhou 2021), each mapped through o's inverse CDF. z_1 is the
  Gumbel-max sample b of `noise`, and u_1 = L_b + w p_b with
  w = exp(-exp(-max_c z_c)): the max of the perturbed log-probabilities is
  a standard Gumbel independent of its argmax, so u_1 is uniform and
  independent of o. Given u_1, d_1 = 1 - u_1^(1/(K-1)) and
  (d_2..d_K) = (1 - d_1) Dir(1_{K-1}) (the Dirichlet's aggregation).
  """
  num_classes = logits.shape[-1]
  orders = carms_orders(num_classes)
  m = num_samples - 1
  _, z, b_1, key_rest = _sample(key, logits, noise)
  key_order, key_rest = jax.random.split(key_rest)
  p = jax.nn.softmax(logits, axis=-1)
  order = jax.random.randint(key_order, logits.shape[:-1], 0, len(orders))
  lo, hi = _order_intervals(p, orders)                  # (..., P, C)
  pick = lambda x: jnp.take_along_axis(
      x, order[..., None, None], axis=-2)[..., 0, :]     # (..., C)
  lo, hi = pick(lo), pick(hi)
  w = jnp.exp(-jnp.exp(-jnp.max(z, axis=-1)))
  u_1 = jnp.sum(b_1 * (lo + w[..., None] * p), axis=-1)
  d_1 = 1.0 - u_1 ** (1.0 / m)
  e = jax.random.exponential(key_rest, (m,) + logits.shape[:-1], logits.dtype)
  d_rest = (1.0 - d_1) * e / jnp.sum(e, axis=0)
  u_rest = (1.0 - d_rest) ** m                           # (K - 1, ...)
  # class of u: the order's class at the number of right edges below u
  right_sorted = jnp.sort(hi, axis=-1)[..., :-1]
  position = jnp.sum(right_sorted <= u_rest[..., None], axis=-1)
  order_classes = jnp.asarray(orders)[order]             # (..., C)
  cls = jnp.take_along_axis(
      jnp.broadcast_to(order_classes, (m,) + order_classes.shape),
      position[..., None], axis=-1)[..., 0]
  b_rest = jax.nn.one_hot(cls, num_classes, dtype=logits.dtype)
  return jnp.concatenate([b_1[None], b_rest])


@_checks.estimator
def carms(key: PRNGKey, logits: Array, f: Fn, num_samples: int = 2,
          noise: Optional[Array] = None) -> Array:
  r"""CARMS: antithetic categorical samples with the importance-weighted LOO.

  For K coupled samples z_1..z_K (`carms_samples`; per variable, the
  coupling's pairwise law J_ab = P(z_i = a, z_j = b), `carms_joint`) and
  r_ab = p_a p_b / J_ab,

      g^_v = 1/K sum_i (e_{z_iv} - p_v) 1/(K-1) sum_{j != i}
             r_v(z_iv, z_jv) (f(z_i) - f(z_j)),

  unbiased: for a != b the weight turns the coupled pair into an
  independent one, E[... | z_iv = a, z_jv = b] weighted by J_ab r_ab =
  p_a p_b, and the pairs a = b contribute E[f(z_i) - f(z_j) | z_iv = z_jv]
  = 0 whatever r_aa (here p_a^2 / J_aa, the authors' choice; 0 where
  J_aa = 0, a pair that never occurs). Needs J_ab > 0 for a != b, which the
  orders guarantee (a first and b last puts antithetic uniforms on both).
  K evaluations of f.

  Args:
    key: PRNG key.
    logits: l, shape (..., C), V = prod of the leading axes variables.
    f: b -> scalar, b one-hot shaped like l.
    num_samples: K >= 2.
    noise: optional, the Gumbel noise of b_1 (`gumbel_noise(key, l.shape)`).

  Reference: Dimitriev & Zhou (2021), "CARMS: Categorical-Antithetic-
  REINFORCE multi-sample gradient estimator", NeurIPS (the Dirichlet copula
  with the inverse-CDF coupling over random orders).
  """
  logits, f = _prepare(key, logits, f)
  _checks.check_int("num_samples", num_samples, 2)
  b = carms_samples(key, logits, num_samples, noise)     # (K, ..., C)
  fs = jax.vmap(f)(b)
  p = jax.nn.softmax(logits, axis=-1)
  joint = carms_joint(logits, num_samples)
  outer = p[..., :, None] * p[..., None, :]
  ratio = jnp.where(joint > 0, outer / jnp.where(joint > 0, joint, 1.0), 0.0)
  # r(z_i, z_j) per variable: (K, K, ...)
  r = jnp.einsum("i...a,...ab,j...b->ij...", b, ratio, b)
  k = num_samples
  diff = fs[:, None] - fs[None, :]                        # (K, K), 0 at j = i
  weights = diff.reshape((k, k) + (1,) * (r.ndim - 2)) * r
  signal = jnp.sum(weights, axis=1) / (k - 1)             # (K, ...)
  return jnp.mean(signal[..., None] * score(logits, b), axis=0)


@_checks.estimator
def indecater(key: PRNGKey, logits: Array, f: Fn, num_samples: int = 1,
              noise: Optional[Array] = None) -> Array:
  r"""IndeCateR, the CatLog-derivative estimator, unbiased.

  Each variable's expectation is taken exactly, the others sampled: with
  F_vc = f(b with variable v set to class c) and p_v = softmax(l_v),

      d/dl_v E[f] = E_{b_-v}[sum_c p_vc (e_c - p_v) F_vc],
      g^_vc = p_vc sum_c' p_vc' (G_vc - G_vc'),
      G_v = (1/N) sum_n (F^n_v - f(b_n)),

  the same as (1/N) sum_n (p_v * F^n_v - p_v (p_v . F^n_v)) in exact
  arithmetic. V (C - 1) + 1 distinct evaluations of f per sample (V C are
  made, vmapped). Its variance comes only from the other variables, none
  from variable v's own draw.

  Centred, for float32: sum_c p_vc (e_c - p_v) = p_v - p_v = 0 identically,
  so a constant a_n (one per sample and variable, whatever it depends on)
  subtracted from F^n_v leaves every draw unchanged in exact arithmetic (the
  estimator stays unbiased, and exact where it was). The textbook form
  p * F - p (p . F) carries a_n p_v (1 - sum_c p_vc), and sum_c p_vc = 1
  only to rounding: a bias of about |a_n| 1e-7 per draw, half of a dominant
  class's gradient (z = 206 over 2^14 draws) at f + 1e4 with D = C = 3
  (tests/test_precision.py). Here each sample is centred on f(b_n) (F^n_vc
  at c = b_nv, for every v: differences of nearby floats, exact), and the
  pairwise form needs no sum_c p_vc = 1 and takes no difference of large
  terms: with a dominant class d, p_vd (G_vd - p_v . G_v) would lose
  1 - p_vd to cancellation, which p_vd sum_c' p_vc' (G_vd - G_vc') does
  not. O(V C^2) arithmetic, beside V C evaluations of f.

  Args:
    key: PRNG key.
    logits: l, shape (..., C), V = prod of leading axes variables.
    f: b -> scalar, b one-hot shaped like l.
    num_samples: N >= 1 i.i.d. samples.
    noise: optional, the Gumbel noise of b_1 (`gumbel_noise(key, l.shape)`).

  Reference: De Smet, Sansone & Zuidberg Dos Martires (2023), "Differentiable
  sampling of categorical distributions using the CatLog-derivative trick",
  NeurIPS, Eq. 12 (IndeCateR).
  """
  logits, f = _prepare(key, logits, f)
  _checks.check_int("num_samples", num_samples, 1)
  b = generic.iid_samples(_family(), key, logits, num_samples, noise)
  num_classes = logits.shape[-1]
  flat = logits.reshape((-1, num_classes))  # (V, C)
  num_vars = flat.shape[0]
  eye = jnp.eye(num_classes, dtype=logits.dtype)
  own = jnp.eye(num_vars, dtype=bool)[:, None, :, None]  # (V, 1, V, 1)

  def values(b_n):  # F[v, c] = f(b_n with variable v set to class c)
    b_n = b_n.reshape((num_vars, num_classes))
    moved = jnp.where(own, eye[None, :, None, :], b_n[None, None])
    fs = jax.vmap(lambda x: f(x.reshape(logits.shape)))(
        moved.reshape((num_vars * num_classes,) + flat.shape))
    return fs.reshape((num_vars, num_classes))

  fvals = jax.vmap(values)(b)                            # (N, V, C)
  # f(b_n) = F^n_0c at c = b_n0 (the same for every v): each sample centred
  own_class = jnp.argmax(b.reshape((num_samples, -1, num_classes))[:, 0], -1)
  centre = jnp.take_along_axis(fvals[:, 0], own_class[:, None], -1)  # (N, 1)
  g = jnp.mean(fvals - centre[:, :, None], axis=0)       # G, (V, C)
  p = jax.nn.softmax(flat, axis=-1)
  pairs = g[:, :, None] - g[:, None, :]                  # G_vc - G_vc'
  grad = p * jnp.sum(p[:, None, :] * pairs, axis=-1)
  return grad.reshape(logits.shape)


def _log_set_probability(log_p: Array, items: Array, removed: Array) -> Array:
  r"""log P(T) of drawing the set T without replacement from D minus A, (V,).

      P(T) = sum_{orderings t of T} prod_i p(t_i) / p(D \ A \ {t_j : j < i}),

  Args:
    log_p: log p over all C classes, (V, C).
    items: the m classes of T, (V, m) indices (m small: the estimator's k).
    removed: the classes of A, taken out first, (V, r) indices.

  The mass left before each draw, p(D \ A \ {t_j : j < i}) =
  1 - p(A) - sum_{j<i} p(t_j), is a logsumexp of log_p over the classes
  still left, never a difference: 1 - p(A) cancels in float32 when A holds
  a dominant class (a relative error of 1e-7 / (1 - p(A)), which gave
  `unordered_set` at k = C = 5, exact in exact arithmetic, errors of 24% of
  a gradient entry at a logit gap of 16 and 100% at 20). Sums the m!
  orderings of the m items.
  """
  num_vars, num_classes = log_p.shape
  m = items.shape[-1]
  if m == 0:
    return jnp.zeros((num_vars,), log_p.dtype)
  perms = np.array(list(itertools.permutations(range(m))))  # (m!, m)
  ordered = items[:, perms]                                  # (V, m!, m)
  classes = jnp.arange(num_classes)
  out = jnp.any(removed[..., None] == classes, axis=-2)      # (V, C): in A
  hit = (ordered[..., None] == classes).astype(jnp.int32)    # (V, m!, m, C)
  taken = out[:, None, None, :] | (jnp.cumsum(hit, -2) - hit > 0)
  left = jax.nn.logsumexp(
      jnp.where(taken, -jnp.inf, log_p[:, None, None, :]), -1)  # (V, m!, m)
  drawn = jnp.take_along_axis(log_p[:, None, :], ordered, -1)   # (V, m!, m)
  return jax.nn.logsumexp(jnp.sum(drawn - left, -1), -1)


@_checks.estimator
def unordered_set(key: PRNGKey, logits: Array, f: Fn, num_samples: int = 2,
                  noise: Optional[Array] = None) -> Array:
  r"""The unordered set estimator with its built-in baseline, per variable.

  For one categorical variable with p = softmax(l), S = k classes drawn
  without replacement (Gumbel-top-k), P(S) the probability of the unordered
  set and P^{D \ A}(T) that of T drawn from the classes other than A:

      g^ = sum_{s in S} p(s) R(S, s) (e_s - p) (f(s) - B(s, S)),
      R(S, s) = P^{D \ s}(S \ s) / P(S),
      B(s, S) = p(s) f(s) + sum_{s' in S \ s} p(s') f(s')
                P^{D \ {s, s'}}(S \ {s, s'}) / P^{D \ s}(S \ s),

  unbiased for k >= 2: given s, B(s, S) is the unordered set estimate of
  E_p[f] from the other k - 1 classes (plus p(s) f(s)), whose mean is E_p[f]
  whatever s is (Kool et al. 2020, Sec. 4); at k = 1 it would be p(s) f(s),
  which depends on s, so k >= 2. With k = C the set is every class: for one
  variable g^ is then the exact gradient.
  For V variables each variable's set is drawn with the others held at one
  shared sample b (the chain's b: S's first class is b_v, same noise), so
  one draw evaluates f V k times (IndeCateR's layout, De Smet et al. 2023).

  Centred: f is replaced by f - f(b) before the products. For every S and s,
  p(s) + sum_{s' in S \ s} p(s') P^{D \ {s, s'}}(S \ {s, s'}) / P^{D \ s}(S \ s)
  = 1 (condition P^{D \ s}(S \ s) on its first draw s'), so B(s, S) moves
  with f by any constant and f(s) - B(s, S) does not: every draw is
  unchanged in exact arithmetic, the estimator stays unbiased (exact at
  k = C). In float32 the identity holds only to rounding, which an offset
  in f turned into a bias: at f + 1e4, k = C = 3, D = 3, 129% of a rare
  class's gradient (p = 5e-5, z = 228 over 2^14 draws). The set
  probabilities are computed in log space (`_log_set_probability`), without
  the cancellation of 1 - p(A) (tests/test_precision.py).

  Args:
    key: PRNG key.
    logits: l, shape (..., C); V = prod of the leading axes.
    f: b -> scalar, b one-hot shaped like l.
    num_samples: k in [2, C], the classes drawn without replacement.
    noise: optional, the Gumbel noise of b (`gumbel_noise(key, l.shape)`).

  Reference: Kool, van Hoof & Welling (2020), "Estimating gradients for
  discrete random variables by sampling without replacement", ICLR.
  """
  logits, f = _prepare(key, logits, f)
  num_classes = logits.shape[-1]
  _checks.check_int("num_samples", num_samples, 2)
  if num_samples > num_classes:
    raise ValueError(f"num_samples (k) = {num_samples} exceeds the "
                     f"{num_classes} classes.")
  g, z, b, _ = _sample(key, logits, noise)
  k = num_samples
  flat_z = z.reshape((-1, num_classes))                      # (V, C)
  num_vars = flat_z.shape[0]
  log_p = jax.nn.log_softmax(logits.reshape((-1, num_classes)), -1)
  _, top = jax.lax.top_k(flat_z, k)                          # (V, k)
  eye = jnp.eye(num_classes, dtype=logits.dtype)
  flat_b = b.reshape((num_vars, num_classes))
  own = jnp.arange(num_vars)[:, None] == jnp.arange(num_vars)[None, :]

  def value(v, c):  # f(b with variable v set to class c)
    moved = jnp.where(own[v][:, None], eye[c][None, :], flat_b)
    return f(moved.reshape(logits.shape))

  fs = jax.vmap(lambda v, cs: jax.vmap(lambda c: value(v, c))(cs))(
      jnp.arange(num_vars), top)                             # (V, k)
  # Centred on f(b) (b_v = top[v, 0] is the set's first class, so
  # fs[v, 0] = f(b) for every v): see the docstring.
  fs = fs - fs[:, :1]
  lp = jnp.take_along_axis(log_p, top, -1)                   # (V, k)
  p_s = jnp.exp(lp)
  none = jnp.zeros((num_vars, 0), top.dtype)
  log_set = _log_set_probability(log_p, top, none)           # (V,)
  rest = [[j for j in range(k) if j != i] for i in range(k)]
  log_without = jnp.stack([
      _log_set_probability(log_p, top[:, rest[i]], top[:, i:i + 1])
      for i in range(k)], -1)                                # (V, k)
  ratio = jnp.exp(log_without - log_set[:, None])            # R(S, s_i)
  baseline = p_s * fs
  for i in range(k):
    for j in rest[i]:
      both = [m for m in range(k) if m not in (i, j)]
      log_both = _log_set_probability(log_p, top[:, both], top[:, [i, j]])
      baseline = baseline.at[:, i].add(
          p_s[:, j] * fs[:, j] * jnp.exp(log_both - log_without[:, i]))
  weights = p_s * ratio * (fs - baseline)                    # (V, k)
  p = jnp.exp(log_p)
  scores = eye[top] - p[:, None, :]                          # (V, k, C)
  grad = jnp.sum(weights[..., None] * scores, axis=1)
  del g
  return jax.lax.stop_gradient(grad).reshape(logits.shape)


# ----------------------------------------------------------------------------
# Relaxed and straight-through estimators (biased).
# ----------------------------------------------------------------------------


@_checks.estimator
def gumbel_softmax(key: PRNGKey, logits: Array, f: Fn,
                   temperature: Any = 1.0,
                   noise: Optional[Array] = None) -> Array:
  r"""Gumbel-softmax / Concrete estimator: BIASED for E[f(b)].

      g^ = d/dl f(softmax((log_softmax(l) + g) / lambda)),   g ~ Gumbel(0, 1).

  Unbiased for the gradient of the relaxed objective E[f(sigma_lambda(z))],
  which tends to E[f(b)] as lambda -> 0 (variance growing). f must be defined
  and differentiable on the simplex (per variable).

  Shapes: logits (..., C); returns shape of logits.

  Reference: Jang, Gu & Poole (2017); Maddison, Mnih & Teh (2017).
  """
  logits, f = _prepare(key, logits, f)
  _checks.check_positive("temperature", temperature)
  g, _, _, _ = _sample(key, logits, noise)
  return jax.grad(lambda l: f(relax_sample(
      jax.nn.log_softmax(l, axis=-1) + g, temperature)))(logits)


@_checks.estimator
def straight_through_gumbel(key: PRNGKey, logits: Array, f: Fn,
                            temperature: Any = 1.0,
                            noise: Optional[Array] = None) -> Array:
  r"""Straight-through Gumbel-softmax: BIASED.

      b_st = s + stop_grad(b - s),  s = softmax(z / lambda),  g^ = d/dl f(b_st),

  with z, b the shared Gumbel-max draw: f is evaluated at the hard one-hot b,
  its derivative w.r.t. b is propagated through the soft s. f must be
  differentiable in b.

  Reference: Jang, Gu & Poole (2017), Sec. 2.2; Bengio et al. (2013).
  """
  logits, f = _prepare(key, logits, f)
  _checks.check_positive("temperature", temperature)
  g, _, b, _ = _sample(key, logits, noise)

  def surrogate(l):
    soft = relax_sample(jax.nn.log_softmax(l, axis=-1) + g, temperature)
    return f(soft + jax.lax.stop_gradient(b - soft))

  return jax.grad(surrogate)(logits)


@_checks.estimator
def gumbel_rao(key: PRNGKey, logits: Array, f: Fn, temperature: Any = 1.0,
               num_samples: int = 10, noise: Optional[Array] = None) -> Array:
  r"""Gumbel-Rao: straight-through Gumbel Rao-Blackwellised over z | b; BIASED.

      g^ = d/dl f(b + s_K - stop_grad(s_K)),
      s_K = (1/K) sum_k softmax((log_softmax(l) + stop_grad(g~_k)) / lambda),

  g~_k = z~_k - log_softmax(l), z~_k ~ p(z | b) i.i.d. (`conditional_gumbel`).
  Its mean equals `straight_through_gumbel`'s (same bias), its variance is
  lower: E[ST-GS | b] estimated with K conditional draws; K = num_samples >= 1.

  Reference: Paulus, Maddison & Krause (2021), "Rao-Blackwellizing the
  Straight-Through Gumbel-Softmax Gradient Estimator", ICLR (arXiv 2020).
  """
  logits, f = _prepare(key, logits, f)
  _checks.check_positive("temperature", temperature)
  _checks.check_int("num_samples", num_samples, 1)
  _, _, b, key_v = _sample(key, logits, noise)
  e = -gumbel_noise(key_v, (num_samples,) + logits.shape, logits.dtype)
  const = jax.lax.stop_gradient(logits)
  g_cond = jax.vmap(lambda ek: conditional_gumbel(const, b, ek))(e)
  g_cond = jax.lax.stop_gradient(g_cond - jax.nn.log_softmax(const, axis=-1))

  def surrogate(l):
    log_p = jax.nn.log_softmax(l, axis=-1)
    soft = jnp.mean(relax_sample(log_p + g_cond, temperature), axis=0)
    return f(b + soft - jax.lax.stop_gradient(soft))

  return jax.grad(surrogate)(logits)


def _softmax_vjp(probs: Array, cotangent: Array) -> Array:
  """J(p)^T v with J(p) = diag(p) - p p^T, the Jacobian of softmax, per variable."""
  return probs * cotangent - probs * jnp.sum(probs * cotangent, axis=-1,
                                             keepdims=True)


@_checks.estimator
def reinmax(key: PRNGKey, logits: Array, f: Fn, temperature: Any = 1.0,
            noise: Optional[Array] = None) -> Array:
  r"""ReinMax, a second-order straight-through estimator: BIASED.

  With pi_0 = softmax(l), pi_1 = (b + softmax(l / lambda)) / 2 and
  J(p) = diag(p) - p p^T, f evaluated at the hard one-hot b:

      g^ = [2 J(pi_1) - 1/2 J(pi_0)] f'(b).

  Straight-through (J(pi_0) f'(b)) is the forward-Euler approximation of the
  gradient; ReinMax is Heun's method, accurate to second order, and like
  straight-through exact in expectation for f linear in b at lambda = 1
  (E[J(pi_1)] = 3/4 J(pi_0)). f must be differentiable in b. The authors
  prefer lambda >= 1.

  Reference: Liu, Zhang, Xu, Wei, Gao, Xing & Sun (2023), "Bridging discrete
  and backpropagation: straight-through and beyond", NeurIPS, Algorithm 2.
  """
  logits, f = _prepare(key, logits, f)
  _checks.check_positive("temperature", temperature)
  _, _, b, _ = _sample(key, logits, noise)
  pi_0 = jax.nn.softmax(logits, axis=-1)
  pi_1 = 0.5 * (b + jax.nn.softmax(logits / temperature, axis=-1))
  g = jax.grad(f)(b)
  return 2.0 * _softmax_vjp(pi_1, g) - 0.5 * _softmax_vjp(pi_0, g)


@_checks.estimator
def gapped_straight_through(key: PRNGKey, logits: Array, f: Fn,
                            temperature: Any = 1.0, gap: Any = 1.0,
                            noise: Optional[Array] = None) -> Array:
  r"""Gapped straight-through (GST): BIASED, no Gumbel noise in the backward.

  A deterministic perturbation m (held fixed) makes the sample k the argmax
  of l + m with a gap of at least kappa to every other class:

      m_k = max_c l_c - l_k,   m_i = -relu(l_i - max_c l_c + kappa)  (i != k),
      s = softmax((l + m) / lambda),   g^ = J(s) f'(b) / lambda,

  i.e. straight-through through s: f is evaluated at the hard b. It keeps
  what makes straight-through Gumbel work (the soft sample agrees with the
  hard one, by a margin) without its noise. gap="p" uses the authors'
  adaptive kappa = -log(1 - p_k) / p_k.

  Reference: Fan, Cong & Zhou (2022), "Training discrete deep generative
  models via gapped straight-through estimator", ICML, Sec. 4 (GST-1.0 and
  GST-p).
  """
  logits, f = _prepare(key, logits, f)
  _checks.check_positive("temperature", temperature)
  _, _, b, _ = _sample(key, logits, noise)
  top = jnp.max(logits, axis=-1, keepdims=True)
  if isinstance(gap, str):
    if gap != "p":
      raise ValueError(f"gap must be a positive number or 'p', got {gap!r}.")
    p_k = jnp.sum(b * jax.nn.softmax(logits, axis=-1), axis=-1, keepdims=True)
    gap = -jnp.log1p(-p_k) / p_k
  else:
    _checks.check_positive("gap", gap)
  raise_k = b * (top - logits)
  lower = (1.0 - b) * jax.nn.relu(logits - top + gap)
  moved = jax.lax.stop_gradient(logits + raise_k - lower)
  soft = jax.nn.softmax(moved / temperature, axis=-1)
  return _softmax_vjp(soft, jax.grad(f)(b)) / temperature


# ----------------------------------------------------------------------------
# REBAR and RELAX.
# ----------------------------------------------------------------------------


@_checks.estimator
def rebar_terms(key: PRNGKey, logits: Array, f: Fn, temperature: Any = 0.5,
                f_relaxed: Optional[RelaxedFn] = None,
                tied: bool = True,
                noise: Optional[Array] = None) -> tuple[Array, Array]:
  r"""REBAR's REINFORCE term r and its control-variate term h (eta = 1).

  `rebar(..., eta)` = r - eta * h, with E[h] = 0 for every temperature, so the
  variance-minimising eta over draws is sum E[r h] / sum E[h h]
  (`control_variates.optimal_eta`). Shapes: both as logits.
  """
  return generic.rebar_terms(_family(), key, logits, f, temperature,
                             f_relaxed, tied, noise)


@_checks.estimator
def rebar(key: PRNGKey, logits: Array, f: Fn, eta: Any = 1.0,
          temperature: Any = 0.5, f_relaxed: Optional[RelaxedFn] = None,
          tied: bool = True, noise: Optional[Array] = None) -> Array:
  r"""Categorical REBAR, unbiased for any eta and temperature.

      g^ = [f(b) - eta c(z~)] (b - softmax(l)) + eta d/dl c(z) - eta d/dl c(z~),
      c(z) = f_relaxed(softmax(z / lambda)),

  z = log_softmax(l) + Gumbel, b = one_hot(argmax z), z~ ~ p(z | b) by the
  conditional Gumbel construction (`conditional_gumbel`); by default z~ uses the
  tied noise (same value as z, conditional gradient), `tied=False` an
  independent v.

  Args:
    key: PRNG key.
    logits: l, shape (..., C).
    f: hard learning signal, one-hot b -> scalar.
    eta: control-variate scale (scalar or broadcastable to l); may be traced,
      so the estimator's variance can be differentiated w.r.t. it.
    temperature: lambda > 0; may be traced (e.g. exp(log_lambda)).
    f_relaxed: (relaxed sample, lambda) -> scalar, the continuous chain in the
      control variate; defaults to f on the relaxed sample.
    tied: use the tied (common random number) conditional noise.
    noise: optional, `gumbel_noise(key, l.shape)` drawn already.

  Returns:
    One draw, shape of l. With eta = 0 it equals `reinforce` on the same key.

  Reference: Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein (2017), "REBAR",
  NeurIPS (categorical appendix); Grathwohl et al. (2018), categorical
  appendix.
  """
  r, h = rebar_terms(key, logits, f, temperature, f_relaxed, tied, noise)
  return r - eta * h


def default_control_variate(params: RelaxParams, z: Array,
                            f_relaxed: RelaxedFn) -> Array:
  """c_phi(z) = f_relaxed(softmax(z / lambda), lambda) + MLP(z flattened)."""
  return generic.default_control_variate(_family(), params, z, f_relaxed)


@_checks.estimator
def relax(key: PRNGKey, logits: Array, f: Fn, cv_params: Any = None,
          control_variate: Optional[ControlVariate] = None,
          temperature: Any = None, f_relaxed: Optional[RelaxedFn] = None,
          tied: bool = True, noise: Optional[Array] = None) -> Array:
  r"""Categorical RELAX with a learned control variate c_phi; unbiased for all phi.

      g^ = [f(b) - c_phi(z~)] (b - softmax(l)) + d/dl c_phi(z) - d/dl c_phi(z~),

  z, b, z~ as in `rebar`. phi is trained by the caller to minimise the
  estimator's variance (`control_variates.variance_gradient`).

  Args:
    key: PRNG key.
    logits: l, shape (..., C).
    f: hard learning signal.
    cv_params: phi. Defaults to `RelaxParams(log lambda, [])`: no network, i.e.
      REBAR with eta = 1. Build one with a network by
      `init_relax_params(key, num_latents=logits.size)`.
    control_variate: c(phi, z, f_relaxed) -> scalar; defaults to
      `default_control_variate` = f_relaxed(softmax(z / lambda)) + MLP(z).
    temperature: lambda of the default cv_params (0.5 when None); give it
      only when cv_params is None (otherwise it lives in cv_params).
    f_relaxed: as in `rebar`.
    tied: tied conditional noise, as in `rebar`.
    noise: optional, `gumbel_noise(key, l.shape)` drawn already.

  Reference: Grathwohl, Choi, Wu, Roeder & Duvenaud (2018), "Backpropagation
  through the void", ICLR, Alg. 2 and the categorical appendix.
  """
  return generic.relax(_family(), key, logits, f, cv_params, control_variate,
                       temperature, f_relaxed, tied, noise)


# ----------------------------------------------------------------------------
# Registry.
# ----------------------------------------------------------------------------

REGISTRY: dict[str, Callable[..., Array]] = {
    "reinforce": reinforce,
    "reinforce_loo": reinforce_loo,
    "ars": ars,
    "arsm": arsm,
    "ars_plus": ars_plus,
    "arsm_plus": arsm_plus,
    "disarm_stick_breaking": disarm_stick_breaking,
    "disarm_stick_breaking_rb": disarm_stick_breaking_rb,
    "disarm_stick_breaking_iw": disarm_stick_breaking_iw,
    "carms": carms,
    "gumbel_softmax": gumbel_softmax,
    "straight_through_gumbel": straight_through_gumbel,
    "gumbel_rao": gumbel_rao,
    "reinmax": reinmax,
    "gapped_straight_through": gapped_straight_through,
    "indecater": indecater,
    "unordered_set": unordered_set,
    "rebar": rebar,
    "relax": relax,
}

UNBIASED: frozenset[str] = frozenset(
    {"reinforce", "reinforce_loo", "ars", "arsm", "ars_plus", "arsm_plus",
     "disarm_stick_breaking", "disarm_stick_breaking_rb",
     "disarm_stick_breaking_iw", "carms", "indecater", "unordered_set", "rebar",
     "relax"})
