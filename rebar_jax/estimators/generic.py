r"""REINFORCE, leave-one-out REINFORCE, REBAR and RELAX, once for any family.

A distribution family is a module (`bernoulli`, `categorical`) with these
public functions of its reparameterisation, shared by the chain of a model and
by every estimator, so no caller repeats a key-split order:

    EVENT_NDIM                         0 (Bernoulli units), 1 (one-hot classes)
    noise_and_spare_key(key, shape, dtype) -> (noise, key_rest)
                                       noise from split(key)[0], key_rest =
                                       split(key)[1] (`spare_key`)
    z_from_noise(logits, noise) -> z   the reparameterised variable
    sample_from_noise(logits, noise)   b = H(z), no gradient
    relax_sample(z, temperature)       sigma_lambda(z), the relaxation of b
    conditional_noise(key, shape, dtype) -> v
    conditional_from_noise(logits, b, v) -> z~ ~ p(z | b)
    tied_noise(logits, z, b) -> v      the v with z~ = z in value
    score(logits, b)                   d/dl log p(b)

The family modules export the estimators below with their own docstrings and
formulas (`bernoulli.rebar`, `categorical.rebar`, ...): they call these.

One noise draw per layer: every estimator takes an optional `noise`, the
family's noise of its key (`family.noise(key, logits.shape)`). A model's chain
has drawn it already to sample b, and passes it, so the estimator's sample is
the chain's without drawing the noise a second time; the estimate equals the
one drawn from `key` alone, draw for draw (tests/test_shared_noise.py).
"""
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from rebar_jax.estimators import _checks

Array = jax.Array
PRNGKey = jax.Array
Fn = Callable[[Array], Array]
RelaxedFn = Callable[[Array, Array], Array]
ControlVariate = Callable[[Any, Array, RelaxedFn], Array]
Family = Any  # a module with the functions listed above


class RebarParams(NamedTuple):
  """REBAR's control-variate parameters: c(z) = eta f(sigma_lambda(z))."""
  eta: Array
  log_temperature: Array

  @classmethod
  def create(cls, eta: float = 1.0, temperature: float = 0.5) -> "RebarParams":
    if not temperature > 0:
      raise ValueError(f"temperature must be > 0, got {temperature!r}.")
    return cls(jnp.asarray(eta, jnp.float32),
               jnp.log(jnp.asarray(temperature, jnp.float32)))


class RelaxParams(NamedTuple):
  """Parameters phi of RELAX's control variate.

  c_phi(z) = f_relaxed(sigma_lambda(z)) + r_rho(z),
  lambda = exp(log_temperature), r_rho an MLP on z flattened, given as a list
  of (weight, bias) pairs whose last layer starts at zero (so RELAX starts as
  REBAR with eta = 1).
  """
  log_temperature: Array
  mlp: Sequence[tuple[Array, Array]]


def init_relax_params(key: PRNGKey, num_latents: int,
                      hidden: Sequence[int] = (32,),
                      temperature: float = 0.5) -> RelaxParams:
  """RelaxParams with an MLP num_latents -> hidden -> 1, output layer zero.

  num_latents is the size of z: D Bernoulli units, or V * C for V categorical
  variables of C classes.
  """
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


def prepare(family: Family, key: Any, logits: Any, f: Fn) -> tuple[Array, Fn]:
  """Checked logits (rank >= EVENT_NDIM) and f (must return a scalar)."""
  _checks.check_key(key)
  logits = _checks.check_logits(logits, min_rank=family.EVENT_NDIM)
  return logits, _checks.scalar_fn(f)


def spare_key(key: PRNGKey) -> PRNGKey:
  """The key for noise beyond the sample's: the second half of split(key).

  A family's `noise_and_spare_key(key)` draws the sample's noise from the
  first half and returns this one, so an estimator given the noise (see
  `sample`) draws the same further noise as one that draws it from `key`.
  """
  return jax.random.split(key)[1]


def sample(family: Family, key: PRNGKey, logits: Array,
           noise: Optional[Array] = None) -> tuple[Array, Array, PRNGKey]:
  """The shared draw: (noise, b, a spare key); noise is family.noise(key).

  A caller that has drawn the noise already (a model's chain, which samples
  b with `family.noise(key)` before the estimator runs) passes it as `noise`,
  so it is not drawn twice: the result is the same, and only the spare key
  is derived from `key`.
  """
  if noise is None:
    noise, key_rest = family.noise_and_spare_key(key, logits.shape,
                                                 logits.dtype)
  else:
    noise, key_rest = _checks.check_noise(noise, logits), spare_key(key)
  return noise, family.sample_from_noise(logits, noise), key_rest


def reinforce(family: Family, key: PRNGKey, logits: Array, f: Fn,
              baseline: Any = 0.0, noise: Optional[Array] = None) -> Array:
  """g^ = (f(b) - c) score(b), b from `sample`."""
  logits, f = prepare(family, key, logits, f)
  _, b, _ = sample(family, key, logits, noise)
  return (f(b) - baseline) * family.score(logits, b)


def iid_samples(family: Family, key: PRNGKey, logits: Array,
                num_samples: int, noise: Optional[Array] = None) -> Array:
  """n i.i.d. samples b_1..b_n, shape (n, *logits.shape).

  b_1 is `sample`'s (so a given noise is its noise); b_2..b_n come from the
  spare key split n - 1 ways.
  """
  _, b_1, key_rest = sample(family, key, logits, noise)
  if num_samples == 1:
    return b_1[None]
  keys = jax.random.split(key_rest, num_samples - 1)
  b_rest = jax.vmap(lambda k: sample(family, k, logits)[1])(keys)
  return jnp.concatenate([b_1[None], b_rest])


def reinforce_loo(family: Family, key: PRNGKey, logits: Array, f: Fn,
                  num_samples: int = 2, noise: Optional[Array] = None
                  ) -> Array:
  """g^ = 1/(n-1) sum_i (f(b_i) - mean_j f(b_j)) score(b_i), b `iid_samples`."""
  logits, f = prepare(family, key, logits, f)
  _checks.check_int("num_samples", num_samples, 2)
  b = iid_samples(family, key, logits, num_samples, noise)
  return leave_one_out(jax.vmap(f)(b), family.score(logits, b))


def leave_one_out(fs: Array, scores: Array) -> Array:
  """1/(n-1) sum_i (f_i - mean_j f_j) scores_i: fs (n,), scores (n, *shape).

  Equals (1/n) sum_i (f_i - 1/(n-1) sum_{j != i} f_j) scores_i, each sample's
  signal less the mean of the others'.
  """
  n = fs.shape[0]
  centred = (fs - jnp.mean(fs)).reshape((n,) + (1,) * (scores.ndim - 1))
  return jnp.sum(centred * scores, axis=0) / (n - 1)


def relaxed_or_default(f: Fn, f_relaxed: Optional[RelaxedFn]) -> RelaxedFn:
  """The relaxed learning signal (soft sample, temperature) -> scalar.

  Defaults to f itself on the soft sample (one stochastic layer).
  """
  if f_relaxed is None:
    return lambda soft, temperature: f(soft)
  return _checks.scalar_fn(f_relaxed, "f_relaxed")


def control_variate_terms(family: Family, key: PRNGKey, logits: Array, f: Fn,
                          c: Callable[[Array], Array], tied: bool = True,
                          noise: Optional[Array] = None
                          ) -> tuple[Array, Array]:
  r"""REBAR/RELAX's two halves (r, h), the estimator being g^ = r - h:

      r = f(b) score(b)                                   (REINFORCE),
      h = c(z~) score(b) - d/dl c(z(l)) + d/dl c(z~(l))    (mean zero),

  z(l) = z_from_noise(l, noise), b = H(z), z~(l) = conditional_from_noise(l, b,
  v), all noise (and b) held fixed, so the derivatives are total derivatives
  w.r.t. l. v is the tied noise of Tucker et al. (2017), App. G.2 (z~ = z in
  value) or, with tied=False, `conditional_noise` of the spare key.
  """
  noise, b, key_v = sample(family, key, logits, noise)
  if tied:
    v = family.tied_noise(logits, family.z_from_noise(logits, noise), b)
  else:
    v = family.conditional_noise(key_v, logits.shape, logits.dtype)
  score_b = family.score(logits, b)
  grad_cz = jax.grad(lambda l: c(family.z_from_noise(l, noise)))(logits)
  c_zt, grad_czt = jax.value_and_grad(
      lambda l: c(family.conditional_from_noise(l, b, v)))(logits)
  return f(b) * score_b, c_zt * score_b - grad_cz + grad_czt


def rebar_terms(family: Family, key: PRNGKey, logits: Array, f: Fn,
                temperature: Any = 0.5, f_relaxed: Optional[RelaxedFn] = None,
                tied: bool = True, noise: Optional[Array] = None
                ) -> tuple[Array, Array]:
  """(r, h) with c(z) = f_relaxed(sigma_lambda(z), lambda)."""
  logits, f = prepare(family, key, logits, f)
  _checks.check_positive("temperature", temperature)
  f_soft = relaxed_or_default(f, f_relaxed)
  c = lambda z: f_soft(family.relax_sample(z, temperature), temperature)
  return control_variate_terms(family, key, logits, f, c, tied, noise)


def default_control_variate(family: Family, params: RelaxParams, z: Array,
                            f_relaxed: RelaxedFn) -> Array:
  """c_phi(z) = f_relaxed(sigma_lambda(z), lambda) + MLP(z flattened)."""
  temperature = jnp.exp(params.log_temperature)
  out = f_relaxed(family.relax_sample(z, temperature), temperature)
  if params.mlp:
    out = out + mlp(params.mlp, z)
  return out


def relax(family: Family, key: PRNGKey, logits: Array, f: Fn,
          cv_params: Optional[RelaxParams] = None,
          control_variate: Optional[ControlVariate] = None,
          temperature: Any = None, f_relaxed: Optional[RelaxedFn] = None,
          tied: bool = True, noise: Optional[Array] = None) -> Array:
  """r - h with c = control_variate(cv_params, z, f_relaxed).

  cv_params defaults to RelaxParams(log lambda, []) with lambda = temperature
  (0.5 when None): REBAR with eta = 1. A temperature given with cv_params is
  an error (it lives in cv_params). control_variate defaults to the family's
  `default_control_variate`.
  """
  logits, f = prepare(family, key, logits, f)
  if cv_params is None:
    temperature = 0.5 if temperature is None else temperature
    _checks.check_positive("temperature", temperature)
    cv_params = RelaxParams(jnp.log(jnp.asarray(temperature, logits.dtype)), [])
  elif temperature is not None:
    raise ValueError("Pass the temperature inside cv_params (log_temperature) "
                     "when cv_params is given, not as `temperature`.")
  if control_variate is None:
    control_variate = lambda p, z, fr: default_control_variate(family, p, z, fr)
  f_soft = relaxed_or_default(f, f_relaxed)
  c = _checks.scalar_fn(lambda z: control_variate(cv_params, z, f_soft),
                        "control_variate")
  r, h = control_variate_terms(family, key, logits, f, c, tied, noise)
  return r - h
