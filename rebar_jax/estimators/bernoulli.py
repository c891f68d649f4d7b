r"""Gradient estimators for independent Bernoulli latents.

Every estimator here estimates

    g(l) = d/dl E_{b ~ Bernoulli(sigmoid(l))}[f(b)],

for logits l of any shape (D = l.size latents, independent) and a scalar function
f of a sample b of the same shape, and has the signature

    grad = estimator(key, logits, f, **options)   # one draw, shape of logits

All randomness comes from `key`; draw many estimates with
`jax.vmap(estimator, in_axes=(0, None, None))(jax.random.split(key, n), logits, f)`.

Shared reparameterisation (Tucker et al. 2017, Sec. 2; Maddison et al. 2017):

    u ~ U(0, 1),   z = l + log u - log(1 - u)   (logistic noise),   b = H(z) = 1[z >= 0],

so b ~ Bernoulli(sigmoid(l)); all estimators that need a hard sample draw b from
the same u, so on one key they see the same b (REBAR with eta=0 equals REINFORCE
draw for draw). The score is d/dl log p(b) = b - sigmoid(l).
"""
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from rebar_jax.estimators import _checks

Array = jax.Array
PRNGKey = jax.Array
Fn = Callable[[Array], Array]


# ----------------------------------------------------------------------------
# Noise and reparameterisations.
# ----------------------------------------------------------------------------


def uniform_open(key: PRNGKey, shape: Sequence[int], dtype=jnp.float32) -> Array:
  """u ~ U(0, 1) on the open interval: u in [tiny, 1 - eps/2], never 0 or 1."""
  return jax.random.uniform(
      key, shape, dtype, minval=jnp.finfo(dtype).tiny, maxval=1.0)


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
  (notes of seed 001, written in a stable form)

      z~ = s * softplus(logit(v) + softplus(s * l)),   s = 2b - 1.

  Gradients flow through l with v (and b) held fixed. Shapes: all as logits.
  """
  s = 2.0 * b - 1.0
  return s * jax.nn.softplus(logit(v) + jax.nn.softplus(s * logits))


def _tied_conditional(logits: Array, z: Array, b: Array) -> Array:
  """z~ = g~(v, l, b) with v the conditional noise that reproduces z.

  Common random numbers on purpose (Tucker et al. 2017, App. G.2): instead of an
  independent v we use the v for which g~(v, l, b) = z, which is uniform given b.
  It is computed in logit space, logit(v) = softplus^{-1}(|z|) - softplus(s l),
  so no clipping is needed; v is held fixed (stop_gradient), so z~ has the same
  value as z but the gradient of the conditional reparameterisation.
  """
  s = 2.0 * b - 1.0
  logit_v = jax.lax.stop_gradient(
      _softplus_inverse(jnp.abs(z)) - jax.nn.softplus(s * logits))
  return s * jax.nn.softplus(logit_v + jax.nn.softplus(s * logits))


def logistic_noise(key: PRNGKey, shape: Sequence[int],
                   dtype=jnp.float32) -> Array:
  """logit(u), u ~ U(0, 1): the noise behind the hard sample of every estimator.

  `reinforce`, `muprop`, `concrete`, `straight_through`, `rebar` and `relax`
  called with `key` all see b = H(logits + logistic_noise(key, logits.shape)),
  so a caller can reproduce their sample (e.g. to reuse it for a decoder
  gradient) without calling them.
  """
  return _noise_and_spare_key(key, shape, dtype)[0]


def _noise_and_spare_key(key: PRNGKey, shape: Sequence[int],
                         dtype) -> tuple[Array, PRNGKey]:
  """(logit(u) from the first half of split(key), the second half).

  One split serves both: XLA does not merge two identical threefry loops.
  """
  key_u, key_rest = jax.random.split(key)
  return logit(uniform_open(key_u, shape, dtype)), key_rest


def _sample(key: PRNGKey, logits: Array) -> tuple[Array, Array, PRNGKey]:
  """The shared draw: (noise logit(u), b = H(l + noise), key for more noise).

  The noise is `logistic_noise(key)`'s.
  """
  noise, key_rest = _noise_and_spare_key(key, logits.shape, logits.dtype)
  return noise, hard_threshold(logits + noise), key_rest


def score(logits: Array, b: Array) -> Array:
  """d/dl log Bernoulli(b; sigmoid(l)) = b - sigmoid(l)."""
  return b - jax.nn.sigmoid(logits)


def _prepare(key: Any, logits: Any, f: Fn) -> tuple[Array, Fn]:
  _checks.check_key(key)
  logits = _checks.check_logits(logits)
  return logits, _checks.scalar_fn(f)


# ----------------------------------------------------------------------------
# Score-function estimators.
# ----------------------------------------------------------------------------


def reinforce(key: PRNGKey, logits: Array, f: Fn,
              baseline: Any = 0.0) -> Array:
  r"""REINFORCE (score function), unbiased for any baseline independent of b.

      g^ = (f(b) - c) (b - sigmoid(l)),   b ~ Bernoulli(sigmoid(l)).

  Args:
    key: PRNG key.
    logits: l, any shape.
    f: b -> scalar, b float 0/1 shaped like l.
    baseline: c, a scalar or an array broadcastable to l; constant, a moving
      average of f kept by the caller, or an input-dependent (NVIL) prediction.
      It must not depend on this draw's b.

  Returns:
    One draw of the estimate, shape of l.

  Reference: Williams (1992); Mnih & Gregor (2014) for learned baselines.
  """
  logits, f = _prepare(key, logits, f)
  _, b, _ = _sample(key, logits)
  return (f(b) - baseline) * score(logits, b)


def reinforce_loo(key: PRNGKey, logits: Array, f: Fn,
                  num_samples: int = 2) -> Array:
  r"""REINFORCE with the leave-one-out baseline over n samples, unbiased.

      g^ = (1/n) sum_i (f(b_i) - (1/(n-1)) sum_{j != i} f(b_j)) (b_i - sigmoid(l))
         = 1/(n-1) sum_i (f(b_i) - f_bar) (b_i - sigmoid(l)),

  with b_1..b_n i.i.d. One call costs n evaluations of f and returns one draw of
  the (n-sample) estimator.

  Args:
    key: PRNG key.
    logits: l, any shape.
    f: b -> scalar.
    num_samples: n >= 2.

  Reference: Kool, van Hoof & Welling (2019), "Buy 4 REINFORCE samples, get a
  baseline for free!"; seed 004 ("RF+"); Salimans & Knowles (2014).
  """
  logits, f = _prepare(key, logits, f)
  _checks.check_int("num_samples", num_samples, 2)
  keys = jax.random.split(key, num_samples)
  b = jax.vmap(lambda k: _sample(k, logits)[1])(keys)  # (n, *shape)
  fs = jax.vmap(f)(b)  # (n,)
  centred = (fs - jnp.mean(fs)).reshape((num_samples,) + (1,) * logits.ndim)
  return jnp.sum(centred * score(logits, b), axis=0) / (num_samples - 1)


def _antithetic_pair(key: PRNGKey, logits: Array) -> tuple[Array, Array, Array]:
  """u ~ U(0,1), b = 1[u < sigmoid(l)], b~ = 1[1 - u < sigmoid(l)]."""
  u = uniform_open(key, logits.shape, logits.dtype)
  # 1[u < sigmoid(l)] <=> logit(u) < l, evaluated in logit space so that it is
  # exact for large |l| where sigmoid(l) rounds to 0 or 1.
  lu = logit(u)
  b = (lu < logits).astype(logits.dtype)
  b_anti = (-lu < logits).astype(logits.dtype)  # logit(1 - u) = -logit(u)
  return u, b, b_anti


def arm(key: PRNGKey, logits: Array, f: Fn) -> Array:
  r"""ARM, the augment-REINFORCE-merge estimator, unbiased.

      g^ = (f(b~) - f(b)) (u - 1/2),   u ~ U(0,1)^D,
      b = 1[u < sigmoid(l)],   b~ = 1[u > sigmoid(-l)]  (the antithetic sample).

  Two evaluations of f per draw.

  Reference: Yin & Zhou (2019), "ARM: Augment-REINFORCE-Merge gradient for
  stochastic binary networks", ICLR, Theorem 1.
  """
  logits, f = _prepare(key, logits, f)
  u, b, b_anti = _antithetic_pair(key, logits)
  return (f(b_anti) - f(b)) * (u - 0.5)


def disarm(key: PRNGKey, logits: Array, f: Fn) -> Array:
  r"""DisARM, ARM Rao-Blackwellised over the augmentation, unbiased.

      g^_i = 1/2 (f(b) - f(b~)) (-1)^{b~_i} 1[b_i != b~_i] sigmoid(|l_i|),

  with the same antithetic pair (b, b~) as ARM. Per coordinate it is the
  conditional expectation of ARM given (b, b~), so its variance is never larger.

  Reference: Dong, Mnih & Tucker (2020), "DisARM: An antithetic gradient
  estimator for binary latent variables", NeurIPS, Eq. 6 (multivariate form).
  """
  logits, f = _prepare(key, logits, f)
  _, b, b_anti = _antithetic_pair(key, logits)
  sign = 1.0 - 2.0 * b_anti
  differ = (b != b_anti).astype(logits.dtype)
  return 0.5 * (f(b) - f(b_anti)) * sign * differ * jax.nn.sigmoid(
      jnp.abs(logits))


def muprop(key: PRNGKey, logits: Array, f: Fn) -> Array:
  r"""MuProp: REINFORCE with a first-order Taylor control variate, unbiased.

  With the mean-field point m = sigmoid(l) and the linearisation
  c(b) = f(m) + f'(m) . (b - m), whose expectation has a known gradient,

      g^ = [f(b) - f(m) - f'(m) . (b - m)] (b - sigmoid(l)) + f'(m) * sigmoid'(l).

  f must be defined and differentiable on [0, 1]^D (it is evaluated at m).
  Costs two evaluations of f and one gradient of f.

  Reference: Gu, Levine, Sutskever & Mnih (2016), "MuProp: Unbiased
  backpropagation for stochastic neural networks", ICLR, Eq. 6.
  """
  logits, f = _prepare(key, logits, f)
  _, b, _ = _sample(key, logits)
  mean = jax.nn.sigmoid(logits)
  f_mean, grad_mean = jax.value_and_grad(f)(mean)
  taylor = f_mean + jnp.sum(grad_mean * (b - mean))
  return (f(b) - taylor) * score(logits, b) + grad_mean * mean * (1.0 - mean)


# ----------------------------------------------------------------------------
# Relaxed and straight-through estimators (biased).
# ----------------------------------------------------------------------------


def relax_sample(z: Array, temperature: Any) -> Array:
  """sigma_lambda(z) = sigmoid(z / lambda), the Concrete relaxation of H(z)."""
  return jax.nn.sigmoid(z / temperature)


def concrete(key: PRNGKey, logits: Array, f: Fn,
             temperature: Any = 0.5) -> Array:
  r"""Concrete / Gumbel-softmax estimator: BIASED for E[f(b)].

      g^ = d/dl f(sigmoid((l + logit(u)) / lambda)),   u ~ U(0,1)^D.

  Unbiased for d/dl E[f(sigma_lambda(z))], the relaxed objective, which tends to
  E[f(b)] as lambda -> 0 (with variance growing like 1/lambda). f must be
  defined and differentiable on [0, 1]^D.

  Reference: Maddison, Mnih & Teh (2017); Jang, Gu & Poole (2017).
  """
  logits, f = _prepare(key, logits, f)
  _checks.check_positive("temperature", temperature)
  noise, _, _ = _sample(key, logits)
  return jax.grad(lambda l: f(relax_sample(l + noise, temperature)))(logits)


def straight_through(key: PRNGKey, logits: Array, f: Fn, gumbel: bool = False,
                     temperature: Any = 1.0) -> Array:
  r"""Straight-through estimators: BIASED.

  Plain (Bengio et al. 2013): the forward pass uses the hard sample b, the
  backward pass the derivative of its mean,

      g^ = f'(b) * sigmoid'(l),   i.e. b_st = sigmoid(l) + stop_grad(b - sigmoid(l)).

  Gumbel (Jang et al. 2017): b = H(z) forward, the Concrete relaxation backward,

      b_st = s + stop_grad(b - s),   s = sigmoid(z / lambda),   g^ = d/dl f(b_st).

  f must be differentiable in b (it is evaluated at the hard b).
  """
  logits, f = _prepare(key, logits, f)
  _checks.check_positive("temperature", temperature)
  noise, b, _ = _sample(key, logits)

  def surrogate(l):
    if gumbel:
      soft = relax_sample(l + noise, temperature)
    else:
      soft = jax.nn.sigmoid(l)
    return f(soft + jax.lax.stop_gradient(b - soft))

  return jax.grad(surrogate)(logits)


def straight_through_gumbel(key: PRNGKey, logits: Array, f: Fn,
                            temperature: Any = 1.0) -> Array:
  """Gumbel straight-through, `straight_through(..., gumbel=True)`; BIASED."""
  return straight_through(key, logits, f, gumbel=True, temperature=temperature)


# ----------------------------------------------------------------------------
# REBAR and RELAX.
# ----------------------------------------------------------------------------

RelaxedFn = Callable[[Array, Array], Array]
ControlVariate = Callable[[Any, Array, RelaxedFn, Array], Array]


def relaxed_or_default(f: Fn, f_relaxed: Optional[RelaxedFn]) -> RelaxedFn:
  """The relaxed learning signal (soft sample, temperature) -> scalar.

  Defaults to f itself on the soft sample (one stochastic layer).
  """
  if f_relaxed is None:
    return lambda soft, temperature: f(soft)
  return _checks.scalar_fn(f_relaxed, "f_relaxed")


def combine_control_variate(logits: Array, b: Array, score_b: Array, f: Fn,
                            c: Callable[[Array], Array],
                            z_of: Callable[[Array], Array],
                            ztilde_of: Callable[[Array], Array]
                            ) -> tuple[Array, Array]:
  r"""REBAR/RELAX's two halves for any family, given its reparameterisations.

  Returns (r, h), with the estimator g^ = r - h:

      r = f(b) score(b)                                   (REINFORCE),
      h = c(z~) score(b) - d/dl c(z(l)) + d/dl c(z~(l))    (mean zero),

  where z_of(l) = z and ztilde_of(l) = z~ as functions of the logits with all
  noise (and b) held fixed: the derivatives are total derivatives w.r.t. l.
  Shared by the Bernoulli and categorical estimators.
  """
  grad_cz = jax.grad(lambda l: c(z_of(l)))(logits)
  c_zt, grad_czt = jax.value_and_grad(lambda l: c(ztilde_of(l)))(logits)
  return f(b) * score_b, c_zt * score_b - grad_cz + grad_czt


def _control_variate_terms(key: PRNGKey, logits: Array, f: Fn,
                           c: Callable[[Array], Array], tied: bool
                           ) -> tuple[Array, Array]:
  """(r, h) of `combine_control_variate` for Bernoulli latents.

  z = g(u, l) = l + logit(u), b = H(z), z~ = g~(v, l, b).
  """
  noise, b, key_v = _sample(key, logits)
  if tied:
    ztilde_of = lambda l: _tied_conditional(l, jax.lax.stop_gradient(l) + noise,
                                            b)
  else:
    v = uniform_open(key_v, logits.shape, logits.dtype)
    ztilde_of = lambda l: conditional_reparameterize(l, b, v)
  return combine_control_variate(logits, b, score(logits, b), f, c,
                                 lambda l: l + noise, ztilde_of)


def rebar_terms(key: PRNGKey, logits: Array, f: Fn, temperature: Any = 0.5,
                f_relaxed: Optional[RelaxedFn] = None,
                tied: bool = True) -> tuple[Array, Array]:
  r"""REBAR's REINFORCE term r and its control-variate term h (eta = 1).

  `rebar(..., eta)` = r - eta * h. Since E[h] = 0 for every temperature, the
  variance-minimising eta over many draws is eta* = sum E[r h] / sum E[h h]
  (the Cov/Var rule of Tucker et al. 2017, Sec. 3.3); see
  `control_variates.optimal_eta`. Shapes: both as logits.
  """
  logits, f = _prepare(key, logits, f)
  _checks.check_positive("temperature", temperature)
  f_soft = relaxed_or_default(f, f_relaxed)
  c = lambda z: f_soft(relax_sample(z, temperature), temperature)
  return _control_variate_terms(key, logits, f, c, tied)


def rebar(key: PRNGKey, logits: Array, f: Fn, eta: Any = 1.0,
          temperature: Any = 0.5, f_relaxed: Optional[RelaxedFn] = None,
          tied: bool = True) -> Array:
  r"""REBAR, unbiased for any eta and temperature.

      g^ = [f(b) - eta c(z~)] d/dl log p(b) + eta d/dl c(z) - eta d/dl c(z~),
      c(z) = f_relaxed(sigma_lambda(z)),

  z = l + logit(u), b = H(z), z~ ~ p(z | b) (see `conditional_reparameterize`).
  By default z~ uses the tied noise of Tucker et al. App. G.2 (same value as z,
  conditional gradient); `tied=False` draws an independent v instead.

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

  Returns:
    One draw, shape of l. With eta = 0 it equals `reinforce` on the same key.

  Reference: Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein (2017), "REBAR:
  Low-variance, unbiased gradient estimates for discrete latent variable
  models", NeurIPS, Eq. 5 and App. G.2; seed 001.
  """
  r, h = rebar_terms(key, logits, f, temperature, f_relaxed, tied)
  return r - eta * h


class RelaxParams(NamedTuple):
  """Parameters phi of RELAX's control variate.

  c_phi(z) = f_relaxed(sigma_lambda(z)) + r_rho(z), lambda = exp(log_temperature),
  r_rho an MLP on z, given as a list of (weight, bias) pairs whose last layer
  starts at zero (so RELAX starts as REBAR with eta = 1).
  """
  log_temperature: Array
  mlp: Sequence[tuple[Array, Array]]


def init_relax_params(key: PRNGKey, num_latents: int,
                      hidden: Sequence[int] = (32,),
                      temperature: float = 0.5) -> RelaxParams:
  """RelaxParams with an MLP D -> hidden -> 1 whose output layer is zero."""
  _checks.check_int("num_latents", num_latents, 1)
  _checks.check_positive("temperature", temperature)
  sizes = [num_latents, *hidden, 1]
  layers = []
  keys = jax.random.split(key, len(sizes) - 1)
  for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
    last = i == len(sizes) - 2
    w = (jnp.zeros((n_in, n_out)) if last else
         jax.random.normal(k, (n_in, n_out)) / jnp.sqrt(n_in))
    layers.append((w, jnp.zeros((n_out,))))
  return RelaxParams(jnp.log(jnp.asarray(temperature, jnp.float32)), layers)


def mlp(layers: Sequence[tuple[Array, Array]], z: Array) -> Array:
  """A tanh MLP applied to z flattened: scalar output."""
  h = jnp.reshape(z, (-1,))
  for i, (w, bias) in enumerate(layers):
    h = h @ w + bias
    if i < len(layers) - 1:
      h = jnp.tanh(h)
  return h[0]


def default_control_variate(params: RelaxParams, z: Array,
                            f_relaxed: RelaxedFn) -> Array:
  """c_phi(z) = f_relaxed(sigma_lambda(z), lambda) + MLP(z)."""
  temperature = jnp.exp(params.log_temperature)
  out = f_relaxed(relax_sample(z, temperature), temperature)
  if params.mlp:
    out = out + mlp(params.mlp, z)
  return out


def relax(key: PRNGKey, logits: Array, f: Fn, cv_params: Any = None,
          control_variate: Optional[ControlVariate] = None,
          f_relaxed: Optional[RelaxedFn] = None, tied: bool = True) -> Array:
  r"""RELAX with a learned control variate c_phi, unbiased for any phi.

      g^ = [f(b) - c_phi(z~)] d/dl log p(b) + d/dl c_phi(z) - d/dl c_phi(z~),

  z, b, z~ as in `rebar`. phi is trained by the caller to minimise the
  estimator's variance (`control_variates.variance_gradient`).

  Args:
    key: PRNG key.
    logits: l, any shape.
    f: hard learning signal.
    cv_params: phi. Defaults to `RelaxParams(log 0.5, [])`: no network, i.e.
      REBAR with eta = 1, lambda = 0.5 (identical to an MLP at its zero init).
    control_variate: c(phi, z, f_relaxed) -> scalar; defaults to
      `default_control_variate` = f_relaxed(sigma_lambda(z)) + MLP_rho(z).
    f_relaxed: as in `rebar`.
    tied: tied conditional noise, as in `rebar`.

  Reference: Grathwohl, Choi, Wu, Roeder & Duvenaud (2018), "Backpropagation
  through the void", ICLR, Alg. 2 (discrete case).
  """
  logits, f = _prepare(key, logits, f)
  if cv_params is None:
    cv_params = RelaxParams(jnp.log(jnp.float32(0.5)), [])
  if control_variate is None:
    control_variate = default_control_variate
  f_soft = relaxed_or_default(f, f_relaxed)
  c = _checks.scalar_fn(lambda z: control_variate(cv_params, z, f_soft),
                        "control_variate")
  r, h = _control_variate_terms(key, logits, f, c, tied)
  return r - h
