r"""Gradient estimators for independent categorical latents (one-hot samples).

Every estimator of the family estimates

    g(l) = d/dl E_{b ~ Cat(softmax(l))}[f(b)],

for logits l of shape (..., C): the leading axes index D = prod(l.shape[:-1])
independent variables, the last axis their C categories. b is the one-hot sample
(float 0/1, shaped like l); relaxed estimators feed f a point of the simplex
instead. This module holds the family's reparameterisation and chain
functions (see `generic`) and its plain estimators (score function, ARS and
ARSM, IndeCateR, the relaxed and straight-through ones, REBAR and RELAX);
`stick_breaking`, `carms` and `unordered_set` hold the estimators built on
their own couplings or sampling schemes. Signature, as for the Bernoulli
estimators:

    grad = estimator(key, logits, f, **options)   # one draw, shape of logits

All randomness comes from `key`; draw many estimates with

    keys = jax.random.split(key, n)
    jax.vmap(estimator, in_axes=(0, None, None))(keys, logits, f)

Every estimator also takes `noise=`, the `noise.gumbel_noise` of its key
drawn already (a model's chain does, to sample b): the same estimate, without
drawing that noise twice (`generic.sample`).

Shared reparameterisation (Gumbel-max; Jang et al. 2017, Maddison et al. 2017):

    u ~ U(0, 1)^{D x C},   g = -log(-log u),   z = log_softmax(l) + g,
    b = one_hot(argmax_c z_c),

so b ~ Cat(softmax(l)). Every estimator that needs a hard sample draws it
this way from the first split of its key (`noise.gumbel_noise`), so on one key
REINFORCE, REBAR, ARS and ARSM see the same b (REBAR with eta = 0 equals
REINFORCE draw for draw). The same u is the exponential race / Dirichlet
augmentation of ARSM: with eps = -log u ~ Exp(1), pi = eps / sum(eps) =
softmax(-g) ~ Dir(1_C) and b = argmin_c pi_c e^{-l_c} = argmax_c z_c. The
score is d/dl log p(b) = b - softmax(l).

Resolution: u is the pair (w, side) of `noise.uniform_halves_from_bits`
(u = w or 1 - w, w uniform on (0, 1/2) at full float32 resolution), so
E = -log u is -log w or -log1p(-w) and g = -log E, all without rounding u
(`noise.exponential_from_halves`, `noise.gumbel_from_halves`). E's law is
exact to 1e-5 relative in both tails, P(E <= t) = 1 - e^-t for t down to
e^-80 and P(E > t) = e^-t for t up to 80, and so is the upper tail of g up to
80 (exact computation over the noise's values in tests/test_noise.py), which
is what a category of probability down to e^-80 needs (`noise.gumbel_noise`).
A float32 u with 23 random bits, as jax.random.gumbel draws it by default,
makes every g > 15.9 impossible: a category that needs one (log-probability
below about -16 against a dominant one) is drawn with probability 2^-23 or
never.

Non-finite logits: every estimator returns an all-NaN estimate (shape of the
logits) when any logit is NaN or +-inf (`_checks.nan_if_nonfinite`), per
member of a vmapped batch.

Half precision: for float16 or bfloat16 logits every estimator computes in
float32 (noise, samples and f's arguments, one-hot or relaxed, are float32)
and returns the logits' dtype (`_checks.float32_inside`; both decorators are
`_checks.estimator`).
"""
import sys
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rebar_jax.estimators import _checks
from rebar_jax.estimators import generic
from rebar_jax.estimators import noise as noise_lib

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
# Reparameterisations and the family's chain functions.
# ----------------------------------------------------------------------------


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
  """The noise of b ~ Cat(softmax(l)) by Gumbel-max: `noise.gumbel_noise`."""
  return noise_lib.gumbel_noise(key, shape, dtype)


# (noise, a spare key): the noise from the first split of key.
noise_and_spare_key = noise_lib.gumbel_noise_and_spare_key


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
  return -noise_lib.gumbel_noise(key, shape, dtype)


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
      -`noise.gumbel_noise` at full resolution).

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


def sample(key: PRNGKey, logits: Array, noise_: Optional[Array] = None
           ) -> tuple[Array, Array, Array, PRNGKey]:
  """The shared draw: (Gumbel noise g, z = log_softmax(l) + g, b, spare key).

  The sample of every estimator of the family on `key` (`generic.sample`).
  noise_: the Gumbel noise of key, when the caller has drawn it already.
  """
  g, b, key_rest = generic.sample(_family(), key, logits, noise_)
  return g, z_from_noise(logits, g), b, key_rest


def prepare(key: Any, logits: Any, f: Fn) -> tuple[Array, Fn]:
  """Checked logits (rank >= 1) and f (`generic.prepare`)."""
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
    noise: optional, `noise.gumbel_noise(key, l.shape)` drawn already.

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
    noise: optional, the Gumbel noise of b_1
      (`noise.gumbel_noise(key, l.shape)`).

  Reference: Kool, van Hoof & Welling (2019), "Buy 4 REINFORCE samples, get a
  baseline for free!", ICLR workshop.
  """
  return generic.reinforce_loo(_family(), key, logits, f, num_samples, noise)


# ----------------------------------------------------------------------------
# IndeCateR (each variable's expectation taken exactly).
# ----------------------------------------------------------------------------


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
    noise: optional, the Gumbel noise of b_1
      (`noise.gumbel_noise(key, l.shape)`).

  Reference: De Smet, Sansone & Zuidberg Dos Martires (2023), "Differentiable
  sampling of categorical distributions using the CatLog-derivative trick",
  NeurIPS, Eq. 12 (IndeCateR).
  """
  logits, f = prepare(key, logits, f)
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


# ----------------------------------------------------------------------------
# ARS and ARSM (augment-REINFORCE-swap(-merge)).
# ----------------------------------------------------------------------------


def _swapped_argmax(log_p: Array, g: Array, c: jax.typing.ArrayLike,
                    j: jax.typing.ArrayLike) -> Array:
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

      g^_dc = (1 - delta_d) [f(b^{c<->j}) - 1/C sum_m f(b^{m<->j})]
              (1 - C pi_dj),

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
  logits, f = prepare(key, logits, f)
  num_classes = logits.shape[-1]
  g, _, _, key_j = sample(key, logits, noise)
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
  logits, f = prepare(key, logits, f)
  num_classes = logits.shape[-1]
  g, _, b, _ = sample(key, logits, noise)
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

  Reference: Yin, Yue & Zhou (2019), "ARSM: Augment-REINFORCE-Swap-Merge
  estimator for gradient backpropagation through categorical variables",
  ICML (ARS+: pi_j partially integrated out, with the symmetry rule delta).
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

  Reference: Yin, Yue & Zhou (2019), "ARSM: Augment-REINFORCE-Swap-Merge
  estimator for gradient backpropagation through categorical variables",
  ICML (ARSM+).
  """
  return _arsm(key, logits, f, noise, rao_blackwell=True)


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
  logits, f = prepare(key, logits, f)
  _checks.check_positive("temperature", temperature)
  g, _, _, _ = sample(key, logits, noise)
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
  logits, f = prepare(key, logits, f)
  _checks.check_positive("temperature", temperature)
  g, _, b, _ = sample(key, logits, noise)

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
  logits, f = prepare(key, logits, f)
  _checks.check_positive("temperature", temperature)
  _checks.check_int("num_samples", num_samples, 1)
  _, _, b, key_v = sample(key, logits, noise)
  e = -noise_lib.gumbel_noise(key_v, (num_samples,) + logits.shape,
                             logits.dtype)
  const = jax.lax.stop_gradient(logits)
  g_cond = jax.vmap(lambda ek: conditional_gumbel(const, b, ek))(e)
  g_cond = jax.lax.stop_gradient(g_cond - jax.nn.log_softmax(const, axis=-1))

  def surrogate(l):
    log_p = jax.nn.log_softmax(l, axis=-1)
    soft = jnp.mean(relax_sample(log_p + g_cond, temperature), axis=0)
    return f(b + soft - jax.lax.stop_gradient(soft))

  return jax.grad(surrogate)(logits)


def _softmax_vjp(probs: Array, cotangent: Array) -> Array:
  """J(p)^T v with J(p) = diag(p) - p p^T, softmax's Jacobian, per variable."""
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
  logits, f = prepare(key, logits, f)
  _checks.check_positive("temperature", temperature)
  _, _, b, _ = sample(key, logits, noise)
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
  logits, f = prepare(key, logits, f)
  _checks.check_positive("temperature", temperature)
  _, _, b, _ = sample(key, logits, noise)
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
  r"""Categorical REBAR, unbiased for any eta and lambda if f is continuous.

      g^ = [f(b) - eta c(z~)] (b - softmax(l)) + eta d/dl c(z) - eta d/dl c(z~),
      c(z) = f_relaxed(softmax(z / lambda)),

  z = log_softmax(l) + Gumbel, b = one_hot(argmax z), z~ ~ p(z | b) by the
  conditional Gumbel construction (`conditional_gumbel`); by default z~ uses the
  tied noise (same value as z, conditional gradient), `tied=False` an
  independent v.

  Requirement: f_relaxed (f by default) must be continuous on the simplex of
  each variable, since c is differentiated along z there. A jump (floor,
  round, argmax, a comparison or `where` on b) biases the estimate without
  an error; `continuity.check_continuity(key, logits, f,
  family="categorical")` finds such jumps.

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
    noise: optional, `noise.gumbel_noise(key, l.shape)` drawn already.

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
  r"""Categorical RELAX with a learned control variate c_phi; unbiased, any phi.

      g^ = [f(b) - c_phi(z~)] (b - softmax(l)) + d/dl c_phi(z) - d/dl c_phi(z~),

  z, b, z~ as in `rebar`. phi is trained by the caller to minimise the
  estimator's variance (`control_variates.variance_gradient`). As for
  `rebar`, f_relaxed (f by default) must be continuous on the simplex, or the
  estimate is biased without an error; `continuity.check_continuity` finds
  a jump.

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
    noise: optional, `noise.gumbel_noise(key, l.shape)` drawn already.

  Reference: Grathwohl, Choi, Wu, Roeder & Duvenaud (2018), "Backpropagation
  through the void", ICLR, Alg. 2 and the categorical appendix.
  """
  return generic.relax(_family(), key, logits, f, cv_params, control_variate,
                       temperature, f_relaxed, tied, noise)
