r"""Gradient estimators for independent Bernoulli latents.

Every estimator here estimates

    g(l) = d/dl E_{b ~ Bernoulli(sigmoid(l))}[f(b)],

for logits l of any shape (D = l.size latents, independent) and a scalar
function f of a sample b of the same shape, and has the signature

    grad = estimator(key, logits, f, **options)   # one draw, shape of logits

All randomness comes from `key`; draw many estimates with

    keys = jax.random.split(key, n)
    jax.vmap(estimator, in_axes=(0, None, None))(keys, logits, f)

Every estimator also takes `noise=`, the `noise.logistic_noise` of its key
drawn already (a model's chain does, to sample b): the same estimate, without
drawing that noise twice (`generic.sample`).

Shared reparameterisation (Tucker et al. 2017, Sec. 2; Maddison et al. 2017):

    u ~ U(0, 1),   z = l + log u - log(1 - u)   (logistic noise),
    b = H(z) = 1[z >= 0],

so b ~ Bernoulli(sigmoid(l)); all estimators that need a hard sample draw b from
the same u, so on one key they see the same b (REBAR with eta=0 equals REINFORCE
draw for draw). The score is d/dl log p(b) = b - sigmoid(l).

u is drawn as a pair (w, side), u = w or 1 - w with w uniform on (0, 1/2) at
full float32 resolution (`noise.uniform_halves_from_bits`), and log u,
log(1 - u), u - 1/2 are evaluated from w without rounding u: P(b = 1) =
sigmoid(l) and P(b = 0) = sigmoid(-l) hold to 1e-5 relative for every l in
[-80, 80], proved by exact computation over every value the noise takes
(`noise.logistic_noise`). (A float32 u with 23 random bits gets the rarer
outcome wrong by 1% at |l| = 12 and makes it 2^-23 for every |l| > 15.9.)

Non-finite logits: every estimator returns an all-NaN estimate (shape of the
logits) when any logit is NaN or +-inf (`_checks.nan_if_nonfinite`: one
reduction and a select, no host sync; under vmap per member of the batch).

Half precision: for float16 or bfloat16 logits every estimator computes in
float32 (noise, samples and f's arguments are float32) and returns the
logits' dtype (`_checks.float32_inside`; both decorators are
`_checks.estimator`).
"""
import math
import sys
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rebar_jax.estimators import _checks
from rebar_jax.estimators import copulas
from rebar_jax.estimators import generic
from rebar_jax.estimators import noise as noise_lib

Array = jax.Array
PRNGKey = jax.Array
Fn = Callable[[Array], Array]


# ----------------------------------------------------------------------------
# Reparameterisations.
# ----------------------------------------------------------------------------


def logit(u: Array) -> Array:
  """log u - log(1 - u), finite for every u in the open interval (0, 1)."""
  return jnp.log(u) - jnp.log1p(-u)


def _softplus_inverse(y: Array) -> Array:
  """x with softplus(x) = y, for y >= 0: log(expm1(y)) written without overflow.

  y = 0 maps to -inf, which is the exact answer (softplus(-inf) = 0).
  """
  return y + jnp.log(-jnp.expm1(-y))


def reparameterize(logits: Array, u: Array) -> Array:
  """z = g(u, l) = l + logit(u): logistic noise shifted by the logits."""
  return logits + logit(u)


def hard_threshold(z: Array) -> Array:
  """b = H(z) = 1[z >= 0] as float, with no gradient."""
  return jax.lax.stop_gradient((z >= 0).astype(z.dtype))


def conditional_reparameterize(logits: Array, b: Array, v: Array) -> Array:
  r"""z~ = g~(v, l, b) ~ p(z | b): the logistic z conditioned on H(z) = b.

  With theta = sigmoid(l), the conditional of u given b is uniform on
  (1 - theta, 1) for b = 1 and on (0, 1 - theta) for b = 0. Mapping
  u = (1 - theta) + v theta (b = 1), u = v (1 - theta) (b = 0) through g gives
  (Tucker et al. 2017, App. C, written in a stable form)

      z~ = s * softplus(logit(v) + softplus(s * l)),   s = 2b - 1.

  Gradients flow through l with v (and b) held fixed. Shapes: all as logits.
  """
  return conditional_from_logit(logits, b, logit(v))


def conditional_from_logit(logits: Array, b: Array, logit_v: Array) -> Array:
  """`conditional_reparameterize` given logit(v) (`noise.logistic_noise`)."""
  s = 2.0 * b - 1.0
  return s * jax.nn.softplus(logit_v + jax.nn.softplus(s * logits))


def tied_noise(logits: Array, z: Array, b: Array) -> Array:
  """logit(v) of the conditional noise v that reproduces z: z~ = z in value.

  Common random numbers (Tucker et al. 2017, App. G.2): inverting
  `conditional_from_logit` at z gives logit(v) = softplus^-1(|z|) -
  softplus(s l), s = 2b - 1, written so no clipping is needed. Held fixed
  (stop_gradient): z~ = `conditional_from_noise(l, b, logit_v)` has the value
  of z and the gradient of the conditional reparameterisation.
  """
  s = 2.0 * b - 1.0
  return jax.lax.stop_gradient(
      _softplus_inverse(jnp.abs(z)) - jax.nn.softplus(s * logits))


def score(logits: Array, b: Array) -> Array:
  """d/dl log Bernoulli(b; sigmoid(l)) = b - sigmoid(l)."""
  return b - jax.nn.sigmoid(logits)


# The family seen from a chain of layers: one noise draw per layer, from which
# the hard sample and its relaxation are deterministic functions.

EVENT_NDIM = 0  # each unit is one Bernoulli variable
REPARAMETERISABLE = False  # b is discrete: no pathwise gradient


def noise(key: PRNGKey, shape: Sequence[int], dtype=jnp.float32) -> Array:
  """The noise of b ~ Bernoulli(sigmoid(l)): `noise.logistic_noise`."""
  return noise_lib.logistic_noise(key, shape, dtype)


# (noise, a spare key): the noise from the first split of key.
noise_and_spare_key = noise_lib.logistic_noise_and_spare_key


def sample_from_noise(logits: Array, noise_: Array) -> Array:
  """b = H(l + noise) ~ Bernoulli(sigmoid(l)), no gradient."""
  return hard_threshold(logits + noise_)


def relaxed_from_noise(logits: Array, noise_: Array, temperature: Any) -> Array:
  """The Concrete relaxation of the same draw, sigmoid((l + noise) / lambda)."""
  return relax_sample(logits + noise_, temperature)


def mean(logits: Array) -> Array:
  """E[b] = sigmoid(l)."""
  return jax.nn.sigmoid(logits)


def z_from_noise(logits: Array, noise_: Array) -> Array:
  """z = l + logit(u), whose threshold H(z) is the sample."""
  return logits + noise_


def conditional_noise(key: PRNGKey, shape: Sequence[int],
                      dtype=jnp.float32) -> Array:
  """logit(v), v ~ U(0, 1): the noise of z~ | b (`noise.logistic_noise`)."""
  return noise_lib.logistic_noise(key, shape, dtype)


conditional_from_noise = conditional_from_logit  # z~ from (l, b, logit(v))


def _family():
  return sys.modules[__name__]


def _prepare(key: Any, logits: Any, f: Fn) -> tuple[Array, Fn]:
  return generic.prepare(_family(), key, logits, f)


def _sample(key: PRNGKey, logits: Array, noise_: Optional[Array] = None
            ) -> tuple[Array, Array, PRNGKey]:
  return generic.sample(_family(), key, logits, noise_)


# ----------------------------------------------------------------------------
# Score-function estimators.
# ----------------------------------------------------------------------------


@_checks.estimator
def reinforce(key: PRNGKey, logits: Array, f: Fn,
              baseline: Any = 0.0, noise: Optional[Array] = None) -> Array:
  r"""REINFORCE (score function), unbiased for any baseline independent of b.

      g^ = (f(b) - c) (b - sigmoid(l)),   b ~ Bernoulli(sigmoid(l)).

  Args:
    key: PRNG key.
    logits: l, any shape.
    f: b -> scalar, b float 0/1 shaped like l.
    baseline: c, a scalar or an array broadcastable to l; constant, a moving
      average of f kept by the caller, or an input-dependent (NVIL) prediction.
      It must not depend on this draw's b.
    noise: optional, `noise.logistic_noise(key, l.shape)` drawn already.

  Returns:
    One draw of the estimate, shape of l.

  Reference: Williams (1992); Mnih & Gregor (2014) for learned baselines.
  """
  return generic.reinforce(_family(), key, logits, f, baseline, noise)


@_checks.estimator
def reinforce_loo(key: PRNGKey, logits: Array, f: Fn,
                  num_samples: int = 2, noise: Optional[Array] = None
                  ) -> Array:
  r"""REINFORCE with the leave-one-out baseline over n samples, unbiased.

      g^ = (1/n) sum_i (f(b_i) - (1/(n-1)) sum_{j != i} f(b_j))
                 (b_i - sigmoid(l))
         = 1/(n-1) sum_i (f(b_i) - f_bar) (b_i - sigmoid(l)),

  with b_1..b_n i.i.d. One call costs n evaluations of f and returns one draw of
  the (n-sample) estimator.

  Args:
    key: PRNG key.
    logits: l, any shape.
    f: b -> scalar.
    num_samples: n >= 2.
    noise: optional, the noise of b_1 (`noise.logistic_noise(key, l.shape)`).

  Reference: Kool, van Hoof & Welling (2019), "Buy 4 REINFORCE samples, get a
  baseline for free!", ICLR workshop; Salimans & Knowles (2014).
  """
  return generic.reinforce_loo(_family(), key, logits, f, num_samples, noise)


def _antithetic_pair(key: PRNGKey, logits: Array,
                     noise_: Optional[Array] = None
                     ) -> tuple[Array, Array, Array]:
  """(u - 1/2, b = 1[u < sigmoid(l)], b~ = 1[1 - u < sigmoid(l)]), u ~ U(0,1).

  From the shared logistic noise n = logit(1 - u) of `_sample` (the chain's
  noise): b = H(l + n) is the shared sample, b~ = H(l - n) its antithetic
  twin (logit(u) = -n), and u - 1/2 = sigmoid(-n) - 1/2 = -tanh(n / 2) / 2.
  The thresholds are evaluated in logit space, so P(b = 1) = sigmoid(l) at the
  noise's full resolution (see `noise.logistic_noise`), also where sigmoid(l)
  rounds to 0 or 1.
  """
  n, b, _ = _sample(key, logits, noise_)
  b_anti = hard_threshold(logits - n)
  return -0.5 * jnp.tanh(0.5 * n), b, b_anti


@_checks.estimator
def arm(key: PRNGKey, logits: Array, f: Fn,
        noise: Optional[Array] = None) -> Array:
  r"""ARM, the augment-REINFORCE-merge estimator, unbiased.

      g^ = (f(b~) - f(b)) (u - 1/2),   u ~ U(0,1)^D,
      b = 1[u < sigmoid(l)],   b~ = 1[u > sigmoid(-l)]  (the antithetic sample).

  Two evaluations of f per draw.

  Reference: Yin & Zhou (2019), "ARM: Augment-REINFORCE-Merge gradient for
  stochastic binary networks", ICLR, Theorem 1.
  """
  logits, f = _prepare(key, logits, f)
  u_centred, b, b_anti = _antithetic_pair(key, logits, noise)
  return (f(b_anti) - f(b)) * u_centred


@_checks.estimator
def disarm(key: PRNGKey, logits: Array, f: Fn,
           noise: Optional[Array] = None) -> Array:
  r"""DisARM, ARM Rao-Blackwellised over the augmentation, unbiased.

      g^_i = 1/2 (f(b) - f(b~)) (-1)^{b~_i} 1[b_i != b~_i] sigmoid(|l_i|),

  with the same antithetic pair (b, b~) as ARM. Per coordinate it is the
  conditional expectation of ARM given (b, b~), so its variance is never larger.

  Reference: Dong, Mnih & Tucker (2020), "DisARM: An antithetic gradient
  estimator for binary latent variables", NeurIPS, Eq. 6 (multivariate form).
  """
  logits, f = _prepare(key, logits, f)
  _, b, b_anti = _antithetic_pair(key, logits, noise)
  sign = 1.0 - 2.0 * b_anti
  differ = (b != b_anti).astype(logits.dtype)
  return 0.5 * (f(b) - f(b_anti)) * sign * differ * jax.nn.sigmoid(
      jnp.abs(logits))


@_checks.estimator
def muprop(key: PRNGKey, logits: Array, f: Fn,
           noise: Optional[Array] = None) -> Array:
  r"""MuProp: REINFORCE with a first-order Taylor control variate, unbiased.

  With the mean-field point m = sigmoid(l) and the linearisation
  c(b) = f(m) + f'(m) . (b - m), whose expectation has a known gradient,

      g^ = [f(b) - f(m) - f'(m) . (b - m)] (b - sigmoid(l))
           + f'(m) * sigmoid'(l).

  f must be defined and differentiable on [0, 1]^D (it is evaluated at m).
  Costs two evaluations of f and one gradient of f.

  Reference: Gu, Levine, Sutskever & Mnih (2016), "MuProp: Unbiased
  backpropagation for stochastic neural networks", ICLR, Eq. 6.
  """
  residual, score_b, analytic = muprop_terms(key, logits, f, noise)
  return residual * score_b + analytic


def muprop_terms(key: PRNGKey, logits: Array, f: Fn,
                 noise: Optional[Array] = None) -> tuple[Array, Array, Array]:
  r"""MuProp's parts: (f(b) - c(b), d/dl log q(b), f'(m) * sigmoid'(l)).

  `muprop` is residual * score + analytic; a baseline independent of b may be
  subtracted from the residual (`protocol.muprop_baseline`). Shapes: (),
  logits', logits'.
  """
  logits, f = _prepare(key, logits, f)
  _, b, _ = _sample(key, logits, noise)
  mean = jax.nn.sigmoid(logits)
  f_mean, grad_mean = jax.value_and_grad(f)(mean)
  taylor = f_mean + jnp.sum(grad_mean * (b - mean))
  return (f(b) - taylor, score(logits, b),
          grad_mean * mean * (1.0 - mean))


@_checks.estimator
def arms(key: PRNGKey, logits: Array, f: Fn, num_samples: int = 2,
         copula: str = "dirichlet", noise: Optional[Array] = None) -> Array:
  r"""ARMS, antithetic REINFORCE over K samples from a copula, unbiased.

      g^ = 1 / ((K - 1) (1 - rho(p))) sum_k (f(b_k) - f_bar) (b_k - p),
      b_k = 1[u_k < p],   p = sigmoid(l),

  with (u_1..u_K) exchangeable uniforms from an antithetic copula (per
  coordinate; coordinates independent) and rho(p) the pairwise correlation of
  the b_k (`copulas`). Why the factor: with m_x = E[f | b_d = x],
  E[f(b_j) (b_kd - p_d)] = (m_1 - m_0) Cov(b_jd, b_kd) for j != k, so the
  leave-one-out estimator of dependent samples has mean (1 - rho) times the
  gradient; dividing restores it. K = 2 (either copula) is DisARM draw for
  draw (1 / (1 - rho) = sigmoid(|l|)); copula="independent" (rho = 0) is
  `reinforce_loo`. K evaluations of f.

  Args:
    key: PRNG key.
    logits: l, any shape.
    f: b -> scalar.
    num_samples: K >= 2.
    copula: "dirichlet", "gaussian" or "independent".
    noise: optional, the noise of b_1 (`noise.logistic_noise(key, l.shape)`).

  Reference: Dimitriev & Zhou (2021), "ARMS: Antithetic-REINFORCE-Multi-Sample
  gradient for binary variables", ICML, Sec. 3 (the Dirichlet and Gaussian
  copulas, the debiasing factor).
  """
  logits, f = _prepare(key, logits, f)
  _checks.check_int("num_samples", num_samples, 2)
  if copula == "independent":
    return generic.reinforce_loo(_family(), key, logits, f, num_samples, noise)
  if copula not in copulas.COPULAS:
    raise ValueError(f"Unknown copula {copula!r}; choose one of "
                     f"{(*copulas.COPULAS, 'independent')}.")
  n, b_1, key_rest = _sample(key, logits, noise)
  flip = logits >= 0  # sampled as 1 - c, c ~ Bernoulli(sigmoid(-|l|))
  c_rest = copulas.rest(copula, key_rest, logits,
                        copulas.first_noise(logits, n), num_samples)
  b = jnp.concatenate([b_1[None], jnp.where(flip, 1.0 - c_rest, c_rest)])
  loo = generic.leave_one_out(jax.vmap(f)(b), score(logits, b))
  return loo / (1.0 - copulas.rho(copula, logits, num_samples))


@_checks.estimator
def double_cv(key: PRNGKey, logits: Array, f: Fn, num_samples: int = 2,
              alpha: Any = 1.0, noise: Optional[Array] = None) -> Array:
  r"""Double control variates: leave-one-out plus a Taylor control variate.

  With K i.i.d. samples b_k, s_k = b_k - p, the gradients g_k = f'(b_k) and
  their leave-one-out means g_-k = 1/(K-1) sum_{j != k} g_j,

      F_k = f(b_k) - alpha g_-k . s_k,
      g^ = 1/(K-1) sum_k (F_k - F_bar) s_k + alpha g_bar p (1 - p),

  unbiased for every alpha: g_-k does not depend on b_k, so
  E[(g_-k . s_k) s_k] = E[g] p (1 - p), which the global correction
  alpha g_bar p (1 - p) adds back, and the cross terms have mean zero.
  F_k - F_bar is a leave-one-out baseline plus the first-order Taylor
  expansion of f around the other samples, so alpha = 1 removes the linear
  part of f; alpha = 0 is `reinforce_loo`. The authors learn alpha by the
  variance loss (`control_variates.variance_gradient` differentiates through
  a traced alpha). K evaluations and K gradients of f, which must be
  differentiable in b (evaluated at the hard samples).

  Args:
    key: PRNG key.
    logits: l, any shape.
    f: b -> scalar, differentiable.
    num_samples: K >= 2.
    alpha: the control variate's scale (scalar or broadcastable to l).
    noise: optional, the noise of b_1 (`noise.logistic_noise(key, l.shape)`).

  Reference: Titsias & Shi (2022), "Double control variates for gradient
  estimation in discrete latent variable models", AISTATS, Sec. 3 (the sign
  convention here makes alpha = 1 the Taylor expansion).
  """
  logits, f = _prepare(key, logits, f)
  _checks.check_int("num_samples", num_samples, 2)
  b = generic.iid_samples(_family(), key, logits, num_samples, noise)
  fs, grads = jax.vmap(jax.value_and_grad(f))(b)
  grad_others = (jnp.sum(grads, axis=0) - grads) / (num_samples - 1)  # g_-k
  s = score(logits, b)
  taylor = jnp.sum(alpha * grad_others * s, axis=tuple(range(1, b.ndim)))
  p = jax.nn.sigmoid(logits)
  return (generic.leave_one_out(fs - taylor, s)
          + alpha * jnp.mean(grads, axis=0) * p * (1.0 - p))


class RodeoParams(NamedTuple):
  """RODEO's control-variate parameters.

  alpha: scale of the scalar Stein control variate inside the baseline.
  beta: scale of the vector Stein control variate.
  net: the surrogate h_omega, a list of (w, b) of an MLP 2 -> hidden -> 2
    (LeakyReLU(0.3)), or None for the Taylor surrogate h = (phi, 0).
  """
  alpha: Array
  beta: Array
  net: Optional[Sequence[tuple[Array, Array]]]


def init_rodeo_params(key: PRNGKey, hidden: Sequence[int] = (100,),
                      alpha: float = 0.0, beta: float = 0.0) -> RodeoParams:
  """RodeoParams with a random MLP 2 -> hidden -> 2 (every layer random).

  The output layer is random, not zero: at alpha = beta = 0 (leave-one-out,
  as the authors start) a zero surrogate would make every variance gradient
  zero. Weights N(0, 1/n_in), biases 0.
  """
  sizes = [2, *hidden, 2]
  keys = jax.random.split(key, len(sizes) - 1)
  net = [(jax.random.normal(k, (n_in, n_out)) / math.sqrt(n_in),
          jnp.zeros((n_out,)))
         for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])]
  return RodeoParams(jnp.asarray(alpha, jnp.float32),
                     jnp.asarray(beta, jnp.float32), net)


def _stein_surrogate(net, phi: Array, f_other: Array) -> Array:
  """h(y) = (h_0, h_1) from the features (phi(y), f(b_j)): shape (..., 2)."""
  if net is None:
    return jnp.stack([phi, jnp.zeros_like(phi)], axis=-1)
  h = jnp.stack([phi, jnp.broadcast_to(f_other, phi.shape)], axis=-1)
  for i, (w, bias) in enumerate(net):
    h = h @ w + bias
    if i < len(net) - 1:
      h = jax.nn.leaky_relu(h, negative_slope=0.3)
  return h


@_checks.estimator
def rodeo(key: PRNGKey, logits: Array, f: Fn, num_samples: int = 2,
          cv_params: Optional[RodeoParams] = None,
          noise: Optional[Array] = None) -> Array:
  r"""RODEO: leave-one-out REINFORCE with discrete Stein control variates.

  With q(b) = prod_d Bernoulli(p_d), the random-scan Gibbs Stein operator

      (A h)(x) = 1/D sum_d q_d(1 - x_d) (h(x^(d)) - h(x)),

  x^(d) being x with coordinate d flipped, has E_q[(A h)(x)] = 0 for every
  h: on each coordinate q_d(0) q_d(1) (h(x^0) - h(x^1)) and its mirror image
  cancel. For K i.i.d. samples b_k, s(y) = y - p, f_k = f(b_k), g_k = f'(b_k):

      h_k(y) = 1/(K-1) sum_{j != k} h_omega(g_j . (y - b_j), f_j),
      a_k = (A h_k0)(b_k),   v_k = (A [h_k1 s])(b_k),
      g^ = 1/K sum_k [(f_k - 1/(K-1) sum_{j != k} (f_j + alpha a_j)) s(b_k)
                      + beta v_k],

  unbiased for every (alpha, beta, omega): h_k does not depend on b_k, so
  E[v_k | b_-k] = 0 and E[a_j | b_-j] = 0, and the baseline of sample k is
  a function of b_-k. h_omega (`RodeoParams.net`) is a surrogate of f fed
  with the first-order Taylor expansion of f around each other sample: with
  the net None, h = (phi, 0), a parameter-free Stein control variate. The
  authors start at alpha = beta = 0 (leave-one-out) and train (alpha, beta,
  omega) on the variance loss (`protocol.rodeo`). Per draw: K evaluations and
  K gradients of f (differentiable in b, evaluated at the hard samples) and
  K (K - 1) (D + 1) evaluations of the small surrogate.

  Args:
    key: PRNG key.
    logits: l, any shape (D = l.size).
    f: b -> scalar, differentiable.
    num_samples: K >= 2.
    cv_params: RodeoParams; None is the Taylor surrogate with alpha = 1,
      beta = 0.
    noise: optional, the noise of b_1 (`noise.logistic_noise(key, l.shape)`).

  Reference: Shi, Zhou, Hwang, Titsias & Mackey (2022), "Gradient estimation
  with discrete Stein operators", NeurIPS, Sec. 4 (the Gibbs operator; the
  surrogate averaged over the other samples after the network, the authors'
  choice for K > 2, which at K = 2 is their K = 2 choice).
  """
  logits, f = _prepare(key, logits, f)
  _checks.check_int("num_samples", num_samples, 2)
  if cv_params is None:
    cv_params = RodeoParams(jnp.ones(()), jnp.zeros(()), None)
  k = num_samples
  b = generic.iid_samples(_family(), key, logits, k, noise)
  fs, grads = jax.vmap(jax.value_and_grad(f))(b)
  dim = logits.size
  bf, gf = b.reshape(k, dim), grads.reshape(k, dim)
  p = jax.nn.sigmoid(logits).reshape(dim)
  s = bf - p
  step = 1.0 - 2.0 * bf                  # x^(d)_d - x_d
  w = p * (1.0 - bf) + (1.0 - p) * bf    # q_d(1 - x_d)
  # For each k the K - 1 others j: phi[k, j] = g_j . (b_k - b_j), and at
  # the neighbours of b_k phi + g_jd step_kd.
  others = np.array([[j for j in range(k) if j != i] for i in range(k)])
  phi = (bf @ gf.T - jnp.sum(gf * bf, axis=1)[None, :])[
      np.arange(k)[:, None], others]                             # (K, K-1)
  phi_nbr = phi[:, :, None] + gf[others] * step[:, None, :]      # (K, K-1, D)
  f_other = fs[others]
  h_x = jnp.mean(_stein_surrogate(cv_params.net, phi, f_other),
                 axis=1)                                         # (K, 2)
  h_nbr = jnp.mean(_stein_surrogate(cv_params.net, phi_nbr,
                                    f_other[..., None]), axis=1)  # (K, D, 2)
  delta = h_nbr - h_x[:, None, :]                                # (K, D, 2)
  a = jnp.mean(w * delta[..., 0], axis=1)
  v = (s * jnp.mean(w * delta[..., 1], axis=1, keepdims=True)
       + w * h_nbr[..., 1] * step / dim)
  shifted = fs + cv_params.alpha * a
  baseline = (jnp.sum(shifted) - shifted) / (k - 1)
  g = jnp.mean((fs - baseline)[:, None] * s + cv_params.beta * v, axis=0)
  return g.reshape(logits.shape)


@_checks.estimator
def indecater(key: PRNGKey, logits: Array, f: Fn, num_samples: int = 1,
              noise: Optional[Array] = None) -> Array:
  r"""IndeCateR for Bernoulli latents (local expectation gradients), unbiased.

  Each coordinate's expectation is taken exactly, the others sampled:

      d/dl_d E[f] = p_d (1 - p_d) E_{b_-d}[f(b_-d, 1) - f(b_-d, 0)],
      g^_d = p_d (1 - p_d) (1/N) sum_n (2 b_nd - 1) (f(b_n) - f(b_n ^ e_d)),

  b_n ^ e_d being b_n with coordinate d flipped. Per sample it costs D + 1
  evaluations of f (vmapped): the estimator for when f is cheap against the
  variance of the score-function family.

  Args:
    key: PRNG key.
    logits: l, any shape (D = l.size).
    f: b -> scalar.
    num_samples: N >= 1 i.i.d. samples b_n.
    noise: optional, the noise of b_1 (`noise.logistic_noise(key, l.shape)`).

  Reference: De Smet, Sansone & Zuidberg Dos Martires (2023), "Differentiable
  sampling of categorical distributions using the CatLog-derivative trick",
  NeurIPS (IndeCateR, here with C = 2); Titsias & Lazaro-Gredilla (2015),
  "Local expectation gradients for black box variational inference", NeurIPS.
  """
  logits, f = _prepare(key, logits, f)
  _checks.check_int("num_samples", num_samples, 1)
  b = generic.iid_samples(_family(), key, logits, num_samples, noise)
  dim = logits.size
  flips = jnp.eye(dim, dtype=logits.dtype).reshape((dim,) + logits.shape)

  def one(b_n):
    flipped = jnp.abs(b_n - flips)  # (D, *shape): coordinate d flipped
    diff = f(b_n) - jax.vmap(f)(flipped)
    return (2.0 * b_n - 1.0) * diff.reshape(logits.shape)

  p = jax.nn.sigmoid(logits)
  return p * (1.0 - p) * jnp.mean(jax.vmap(one)(b), axis=0)


# ----------------------------------------------------------------------------
# Relaxed and straight-through estimators (biased).
# ----------------------------------------------------------------------------


def relax_sample(z: Array, temperature: Any) -> Array:
  """sigma_lambda(z) = sigmoid(z / lambda), the Concrete relaxation of H(z)."""
  return jax.nn.sigmoid(z / temperature)


@_checks.estimator
def concrete(key: PRNGKey, logits: Array, f: Fn,
             temperature: Any = 0.5, noise: Optional[Array] = None) -> Array:
  r"""Concrete / Gumbel-softmax estimator: BIASED for E[f(b)].

      g^ = d/dl f(sigmoid((l + logit(u)) / lambda)),   u ~ U(0,1)^D.

  Unbiased for d/dl E[f(sigma_lambda(z))], the relaxed objective, which tends to
  E[f(b)] as lambda -> 0 (with variance growing like 1/lambda). f must be
  defined and differentiable on [0, 1]^D.

  Reference: Maddison, Mnih & Teh (2017); Jang, Gu & Poole (2017).
  """
  logits, f = _prepare(key, logits, f)
  _checks.check_positive("temperature", temperature)
  noise, _, _ = _sample(key, logits, noise)
  return jax.grad(lambda l: f(relax_sample(l + noise, temperature)))(logits)


@_checks.estimator
def straight_through(key: PRNGKey, logits: Array, f: Fn, gumbel: bool = False,
                     temperature: Any = 1.0,
                     noise: Optional[Array] = None) -> Array:
  r"""Straight-through estimators: BIASED.

  Plain (Bengio et al. 2013): the forward pass uses the hard sample b, the
  backward pass the derivative of its mean,

      g^ = f'(b) * sigmoid'(l),
      i.e. b_st = sigmoid(l) + stop_grad(b - sigmoid(l)).

  Gumbel (Jang et al. 2017): b = H(z) forward, the Concrete relaxation backward,

      b_st = s + stop_grad(b - s),   s = sigmoid(z / lambda),
      g^ = d/dl f(b_st).

  f must be differentiable in b (it is evaluated at the hard b).
  """
  logits, f = _prepare(key, logits, f)
  _checks.check_positive("temperature", temperature)
  noise, b, _ = _sample(key, logits, noise)

  def surrogate(l):
    if gumbel:
      soft = relax_sample(l + noise, temperature)
    else:
      soft = jax.nn.sigmoid(l)
    return f(soft + jax.lax.stop_gradient(b - soft))

  return jax.grad(surrogate)(logits)


@_checks.estimator
def straight_through_gumbel(key: PRNGKey, logits: Array, f: Fn,
                            temperature: Any = 1.0,
                            noise: Optional[Array] = None) -> Array:
  """Gumbel straight-through, `straight_through(..., gumbel=True)`; BIASED."""
  return straight_through(key, logits, f, gumbel=True, temperature=temperature,
                          noise=noise)


@_checks.estimator
def reinmax(key: PRNGKey, logits: Array, f: Fn, temperature: Any = 1.0,
            noise: Optional[Array] = None) -> Array:
  r"""ReinMax, a second-order straight-through estimator: BIASED.

  With pi_0 = sigmoid(l) and pi_1 = (b + sigmoid(l / lambda)) / 2 (Heun's
  method between the sample and the mean), f evaluated at the hard b:

      g^ = f'(b) [2 pi_1 (1 - pi_1) - 1/2 pi_0 (1 - pi_0)].

  Exact in expectation for f linear in b (E[pi_1 (1 - pi_1)] = 3/4 pi_0 (1 -
  pi_0) at lambda = 1), as straight-through is; its bias on curved f is of
  second order where straight-through's is of first. The Bernoulli case of
  `categorical.reinmax` (two classes, logits (l, 0)). f must be differentiable
  in b.

  Reference: Liu, Zhang, Xu, Wei, Gao, Xing & Sun (2023), "Bridging discrete
  and backpropagation: straight-through and beyond", NeurIPS, Algorithm 2.
  """
  logits, f = _prepare(key, logits, f)
  _checks.check_positive("temperature", temperature)
  _, b, _ = _sample(key, logits, noise)
  pi_0 = jax.nn.sigmoid(logits)
  pi_1 = 0.5 * (b + jax.nn.sigmoid(logits / temperature))
  return jax.grad(f)(b) * (2.0 * pi_1 * (1.0 - pi_1)
                           - 0.5 * pi_0 * (1.0 - pi_0))


# ----------------------------------------------------------------------------
# REBAR and RELAX.
# ----------------------------------------------------------------------------

RelaxedFn = generic.RelaxedFn
ControlVariate = generic.ControlVariate


@_checks.estimator
def rebar_terms(key: PRNGKey, logits: Array, f: Fn, temperature: Any = 0.5,
                f_relaxed: Optional[RelaxedFn] = None,
                tied: bool = True,
                noise: Optional[Array] = None) -> tuple[Array, Array]:
  r"""REBAR's REINFORCE term r and its control-variate term h (eta = 1).

  `rebar(..., eta)` = r - eta * h. Since E[h] = 0 for every temperature, the
  variance-minimising eta over many draws is eta* = sum E[r h] / sum E[h h]
  (the Cov/Var rule of Tucker et al. 2017, Sec. 3.3); see
  `control_variates.optimal_eta`. Shapes: both as logits.
  """
  return generic.rebar_terms(_family(), key, logits, f, temperature,
                             f_relaxed, tied, noise)


@_checks.estimator
def rebar(key: PRNGKey, logits: Array, f: Fn, eta: Any = 1.0,
          temperature: Any = 0.5, f_relaxed: Optional[RelaxedFn] = None,
          tied: bool = True, noise: Optional[Array] = None) -> Array:
  r"""REBAR, unbiased for any eta and temperature when f is continuous.

      g^ = [f(b) - eta c(z~)] d/dl log p(b) + eta d/dl c(z) - eta d/dl c(z~),
      c(z) = f_relaxed(sigma_lambda(z)),

  z = l + logit(u), b = H(z), z~ ~ p(z | b) (see `conditional_reparameterize`).
  By default z~ uses the tied noise of Tucker et al. App. G.2 (same value as z,
  conditional gradient); `tied=False` draws an independent v instead.

  Requirement: f_relaxed (f by default) must be continuous on the relaxed
  domain [0, 1]^n, since c is differentiated along z there. A jump (floor,
  round, a comparison or `where` on b) biases the estimate without an error:
  f(b) = floor(1.5 b), which equals b on {0, 1}, gives a mean of 0.037
  against the exact 0.2445. `continuity.check_continuity(key, logits, f)`
  finds such jumps.

  Args:
    key: PRNG key.
    logits: l, any shape.
    f: hard learning signal, b -> scalar.
    eta: the control-variate scale (scalar or broadcastable to l); may be a
      traced value so that the variance can be differentiated w.r.t. it.
    temperature: lambda > 0 (traced values allowed, e.g. exp(log_lambda)).
    f_relaxed: (relaxed sample, lambda) -> scalar, the continuous chain used in
      the control variate; defaults to f on the relaxed sample. Multi-layer
      models must pass the relaxed chain here (the control variate must be a
      continuous function of this layer's noise).
    tied: use the tied (common random number) conditional noise.
    noise: optional, `noise.logistic_noise(key, l.shape)` drawn already.

  Returns:
    One draw, shape of l. With eta = 0 it equals `reinforce` on the same key.

  Reference: Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein (2017), "REBAR:
  Low-variance, unbiased gradient estimates for discrete latent variable
  models", NeurIPS, Eq. 5 and App. G.2.
  """
  r, h = rebar_terms(key, logits, f, temperature, f_relaxed, tied, noise)
  return r - eta * h


# RELAX's parameters (shared with the categorical family).
RelaxParams = generic.RelaxParams
init_relax_params = generic.init_relax_params
mlp = generic.mlp


def default_control_variate(params: RelaxParams, z: Array,
                            f_relaxed: RelaxedFn) -> Array:
  """c_phi(z) = f_relaxed(sigma_lambda(z), lambda) + MLP(z)."""
  return generic.default_control_variate(_family(), params, z, f_relaxed)


@_checks.estimator
def relax(key: PRNGKey, logits: Array, f: Fn, cv_params: Any = None,
          control_variate: Optional[ControlVariate] = None,
          temperature: Any = None, f_relaxed: Optional[RelaxedFn] = None,
          tied: bool = True, noise: Optional[Array] = None) -> Array:
  r"""RELAX with a learned control variate c_phi, unbiased for any phi.

      g^ = [f(b) - c_phi(z~)] d/dl log p(b) + d/dl c_phi(z) - d/dl c_phi(z~),

  z, b, z~ as in `rebar`. phi is trained by the caller to minimise the
  estimator's variance (`control_variates.variance_gradient`). As for
  `rebar`, f_relaxed (f by default) must be continuous on [0, 1]^n, or the
  estimate is biased without an error; `continuity.check_continuity` finds
  a jump.

  Args:
    key: PRNG key.
    logits: l, any shape.
    f: hard learning signal.
    cv_params: phi. Defaults to `RelaxParams(log lambda, [])`: no network,
      i.e. REBAR with eta = 1 (identical to an MLP at its zero init).
    control_variate: c(phi, z, f_relaxed) -> scalar; defaults to
      `default_control_variate` = f_relaxed(sigma_lambda(z)) + MLP_rho(z).
    temperature: lambda of the default cv_params (0.5 when None); give it
      only when cv_params is None (otherwise it lives in cv_params).
    f_relaxed: as in `rebar`.
    tied: tied conditional noise, as in `rebar`.
    noise: optional, `noise.logistic_noise(key, l.shape)` drawn already.

  Reference: Grathwohl, Choi, Wu, Roeder & Duvenaud (2018), "Backpropagation
  through the void", ICLR, Alg. 2 (discrete case).
  """
  return generic.relax(_family(), key, logits, f, cv_params, control_variate,
                       temperature, f_relaxed, tied, noise)
