r"""Diagonal Gaussian latents: the family, its score and its pathwise gradient.

A layer of H Gaussian units has parameters `params` of shape (..., H, 2), the
mean and the log standard deviation of each unit,

    z = mu + sigma * eps,   eps ~ N(0, I),   mu = params[..., 0],
    sigma = exp(params[..., 1]),

so z ~ N(mu, diag(sigma^2)), shape (..., H). In the model protocol the layer's
"logits" are these parameters and its event shape is (H,). Every estimator
here estimates

    g(params) = d/dparams E_{z ~ N(mu, sigma^2)}[f(z)],    shape of params,

with the contract of the discrete families, `est(key, params, f, **options)`
(one draw; `noise=` the eps of the chain, shape params.shape[:-1]):

  * `reinforce`, `reinforce_loo`: score-function estimators, which only
    evaluate f, with the score

        d/dmu log q = (z - mu) / sigma^2,
        d/dlog sigma log q = ((z - mu) / sigma)^2 - 1;

  * `pathwise`: the reparameterisation gradient d/dparams f(mu + sigma eps)
    (Kingma & Welling 2014; Rezende et al. 2014), which needs f
    differentiable in z. In a model's chain f is the learning signal log p(x, z)
    - log q(z | x) with q's parameters held fixed, so the estimate is the
    "sticking the landing" gradient (Roeder et al. 2017): the zero-mean score
    term -d/dphi log q(z | x) of the signal is dropped, as the composition
    does for every estimator (`rebar_jax.gradients`).

The multi-sample objectives (`multisample`) work on Gaussian layers through
their log-probability; the reparameterised K-sample gradients (the pathwise
IWAE gradient and DReG) are the registry's `REPARAMETERISED` entries.

Shapes: the last axis of params has size 2; the noise and the sample have
shape params.shape[:-1]; H units are independent.

Precision, as for the discrete families (`_checks.estimator`): non-finite
params give an all-NaN estimate; float16 or bfloat16 params are computed in
float32 (f is called on float32 samples) and the estimate is returned in the
params' dtype.
"""
import math
import sys
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from rebar_jax.estimators import _checks
from rebar_jax.estimators import generic

Array = jax.Array
PRNGKey = jax.Array
Fn = Callable[[Array], Array]

EVENT_NDIM = 0  # each unit is one Gaussian variable
REPARAMETERISABLE = True  # z is a differentiable function of params and eps


def split(params: Array) -> tuple[Array, Array]:
  """(mu, log sigma), each of shape params.shape[:-1]."""
  return params[..., 0], params[..., 1]


def params_from(mean_: Array, log_std: Array) -> Array:
  """The layer parameters (..., H, 2) of N(mean, exp(log_std)^2)."""
  return jnp.stack(jnp.broadcast_arrays(mean_, log_std), axis=-1)


def noise(key: PRNGKey, shape: Sequence[int], dtype=jnp.float32) -> Array:
  """eps ~ N(0, I) of the sample's shape (..., H)."""
  return jax.random.normal(key, tuple(shape), dtype)


def noise_and_spare_key(key: PRNGKey, shape: Sequence[int], dtype=jnp.float32
                        ) -> tuple[Array, PRNGKey]:
  """eps from split(key)[0] and the spare key split(key)[1] (`generic`)."""
  first, rest = jax.random.split(key)
  return noise(first, shape, dtype), rest


def sample_from_noise(params: Array, eps: Array) -> Array:
  """z = mu + sigma * eps, differentiable in params (and eps)."""
  mu, log_std = split(params)
  return mu + jnp.exp(log_std) * eps


def relaxed_from_noise(params: Array, eps: Array, temperature: Any) -> Array:
  """The sample itself: a Gaussian layer needs no relaxation."""
  del temperature
  return sample_from_noise(params, eps)


def mean(params: Array) -> Array:
  """E[z] = mu."""
  return split(params)[0]


def log_prob(params: Array, z: Array) -> Array:
  """log N(z; mu, sigma^2) per unit, shape params.shape[:-1]."""
  mu, log_std = split(params)
  eps = (z - mu) * jnp.exp(-log_std)
  return -0.5 * eps**2 - log_std - 0.5 * math.log(2 * math.pi)


def score(params: Array, z: Array) -> Array:
  """d/dparams log N(z; mu, sigma^2), shape of params (see the module doc)."""
  mu, log_std = split(params)
  eps = (z - mu) * jnp.exp(-log_std)
  return params_from(eps * jnp.exp(-log_std), eps**2 - 1.0)


def _family():
  return sys.modules[__name__]


def _prepare(key: Any, params: Any, f: Fn) -> tuple[Array, Fn]:
  _checks.check_key(key)
  params = _checks.check_logits(params, min_rank=1)
  if params.shape[-1] != 2:
    raise ValueError(
        "Gaussian parameters must have a last axis of size 2 (mean, log "
        f"standard deviation), got shape {params.shape}; build them with "
        "gaussian.params_from(mean, log_std).")
  return params, _checks.scalar_fn(f)


def _sample(key: PRNGKey, params: Array, eps: Optional[Array] = None
            ) -> tuple[Array, Array, PRNGKey]:
  """(eps, z, spare key): the draw every estimator here makes from `key`."""
  if eps is None:
    eps, rest = noise_and_spare_key(key, params.shape[:-1], params.dtype)
  else:
    eps = jnp.asarray(eps, params.dtype)
    if eps.shape != params.shape[:-1]:
      raise ValueError(
          f"noise must have the shape of the sample {params.shape[:-1]}, got "
          f"{eps.shape}: pass gaussian.noise(key, params.shape[:-1]).")
    rest = generic.spare_key(key)
  return eps, sample_from_noise(params, eps), rest


@_checks.estimator
def reinforce(key: PRNGKey, params: Array, f: Fn, baseline: Any = 0.0,
              noise: Optional[Array] = None) -> Array:
  r"""REINFORCE, g^ = (f(z) - c) d/dparams log q(z), z ~ N(mu, sigma^2).

  Unbiased for any baseline c independent of z. Cost: 1 evaluation of f.

  Args:
    key: PRNG key.
    params: (..., H, 2) means and log standard deviations.
    f: z (..., H) -> scalar.
    baseline: c, broadcastable to params.
    noise: optional eps (..., H) drawn already.
  Returns:
    One draw, shape of params.

  Reference: Williams (1992).
  """
  params, f = _prepare(key, params, f)
  _, z, _ = _sample(key, params, noise)
  return (f(jax.lax.stop_gradient(z)) - baseline) * score(params, z)


@_checks.estimator
def reinforce_loo(key: PRNGKey, params: Array, f: Fn, num_samples: int = 2,
                  noise: Optional[Array] = None) -> Array:
  r"""REINFORCE with the leave-one-out baseline over n i.i.d. samples.

      g^ = 1/(n-1) sum_i (f(z_i) - mean_j f(z_j)) d/dparams log q(z_i),

  unbiased; n evaluations of f. z_1 is drawn from `key` (or is `noise`'s),
  z_2..z_n from the spare key.

  Reference: Kool, van Hoof & Welling (2019); Salimans & Knowles (2014).
  """
  params, f = _prepare(key, params, f)
  _checks.check_int("num_samples", num_samples, 2)
  _, z_1, rest = _sample(key, params, noise)
  keys = jax.random.split(rest, num_samples - 1)
  z_rest = jax.vmap(lambda k: _sample(k, params)[1])(keys)
  z = jax.lax.stop_gradient(jnp.concatenate([z_1[None], z_rest]))
  return generic.leave_one_out(jax.vmap(f)(z), score(params, z))


@_checks.estimator
def pathwise(key: PRNGKey, params: Array, f: Fn,
             noise: Optional[Array] = None) -> Array:
  r"""The reparameterisation gradient g^ = d/dparams f(mu + sigma * eps).

  Unbiased for f differentiable in z (with E|grad f| finite); 1 evaluation of
  f and its gradient. Usually far lower variance than the score function.

  Reference: Kingma & Welling (2014); Rezende, Mohamed & Wierstra (2014).
  """
  params, f = _prepare(key, params, f)
  eps, _, _ = _sample(key, params, noise)
  return jax.grad(lambda p: f(sample_from_noise(p, eps)))(params)
