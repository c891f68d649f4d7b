"""Statistical checks for gradient estimators (used by the test suite, public).

The test of unbiasedness: with n independent draws g_1..g_n of an estimator, the
Monte Carlo mean m = (1/n) sum g_k has standard error s/sqrt(n), s the sample
standard deviation of the same draws. For an unbiased estimator the z-score
|m - g_exact| / (s / sqrt(n)) is approximately |N(0, 1)| per coordinate.
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def draws(estimator: Callable[..., Array], key: Array, logits: Array,
          f: Callable[[Array], Array], num_draws: int, chunk: int = 8192,
          **options: Any) -> np.ndarray:
  """`num_draws` independent draws of `estimator(key_k, logits, f, **options)`.

  Draws are vmapped under jit in chunks of `chunk` keys (one compilation, a
  host loop over chunks) so memory stays bounded. Returns a numpy array
  (num_draws, *logits.shape).

  The chunks are deliberately not folded into a `lax.map`: with jaxlib 0.10.2
  on CPU, `jit(lax.map(vmap(fn)))` over large chunks was seen to return wrong
  values for some fn (see tests/test_xla_regressions.py).
  """
  keys = jax.random.split(key, num_draws)
  one = jax.jit(jax.vmap(lambda k: estimator(k, logits, f, **options)))
  chunk = min(chunk, num_draws)
  if num_draws % chunk:
    raise ValueError(
        f"num_draws={num_draws} must be a multiple of chunk={chunk}.")
  out = [np.asarray(one(keys[i:i + chunk])) for i in range(0, num_draws, chunk)]
  return np.concatenate(out).reshape((num_draws,) + jnp.shape(logits))


def z_scores(samples: np.ndarray, target: Any) -> np.ndarray:
  """|mean - target| / standard error, per coordinate (float64 arithmetic).

  Coordinates whose draws have zero spread and whose mean equals the target get
  z = 0; zero spread with a different mean gets z = inf.
  """
  samples = np.asarray(samples, np.float64)
  target = np.asarray(target, np.float64)
  n = samples.shape[0]
  mean = samples.mean(axis=0)
  se = samples.std(axis=0, ddof=1) / np.sqrt(n)
  diff = np.abs(mean - target)
  with np.errstate(divide="ignore", invalid="ignore"):
    z = np.where(se > 0, diff / np.where(se > 0, se, 1.0),
                 np.where(diff <= 1e-7 * (1 + np.abs(target)), 0.0, np.inf))
  return z


def assert_unbiased(samples: np.ndarray, target: Any, max_z: float = 4.5,
                    name: str = "estimator") -> None:
  """Asserts every coordinate's z-score against `target` is <= `max_z`."""
  z = z_scores(samples, target)
  worst = float(np.max(z))
  if not worst <= max_z:
    mean = np.asarray(samples, np.float64).mean(axis=0)
    raise AssertionError(
        f"{name}: max z-score {worst:.2f} > {max_z} (n={samples.shape[0]})\n"
        f"  MC mean: {mean.ravel()}\n  exact:   {np.ravel(target)}\n"
        f"  z:       {z.ravel()}")


def assert_biased(samples: np.ndarray, target: Any, min_z: float = 6.0,
                  name: str = "estimator") -> None:
  """Asserts some coordinate's z-score against `target` exceeds `min_z`."""
  worst = float(np.max(z_scores(samples, target)))
  if not worst > min_z:
    raise AssertionError(
        f"{name}: expected a detectable bias, but max z-score is only "
        f"{worst:.2f} <= {min_z} (n={samples.shape[0]}).")


def latent_states(model) -> tuple[Array, ...]:
  """Every joint latent state of a protocol model, one array per layer.

  The product over layers of every state of each layer: 2^n for n Bernoulli
  units, C^V for V categorical variables of C classes (one-hot). Returns a
  tuple of L arrays (N, *event_shape_l), N the product of the layers' counts.
  Meant for tiny models (N up to a few thousand).
  """
  per_layer = []
  for layer in model.stochastic_layers():
    shape = tuple(layer.event_shape)
    if layer.family == "bernoulli":
      n = int(np.prod(shape))
      bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
      per_layer.append(bits.reshape((-1,) + shape).astype(np.float32))
    elif layer.family == "categorical":
      *variables, classes = shape
      v = int(np.prod(variables))
      index = np.stack(np.unravel_index(np.arange(classes**v),
                                        (classes,) * v), -1) if v else None
      per_layer.append(np.eye(classes, dtype=np.float32)[index].reshape(
          (-1,) + shape))
    else:
      raise ValueError(f"Cannot enumerate a {layer.family!r} layer.")
  grids = np.meshgrid(*[np.arange(len(s)) for s in per_layer], indexing="ij")
  return tuple(jnp.asarray(s[g.ravel()]) for s, g in zip(per_layer, grids))


def unit_log_prob(family: str, logits: Array, b: Array) -> Array:
  """log q of each unit of a layer, shape b's (..., *event).

  family: "bernoulli" (logits (..., *event)), "categorical" (logits
  (..., *event) with the classes last; b one-hot, the value per class) or
  "gaussian" (logits (..., *event, 2): the mean and log standard deviation).
  """
  if family == "bernoulli":
    return b * logits - jax.nn.softplus(logits)
  if family == "categorical":
    return b * jax.nn.log_softmax(logits, axis=-1)
  if family == "gaussian":
    mu, log_std = logits[..., 0], logits[..., 1]
    eps = (b - mu) * jnp.exp(-log_std)
    return -0.5 * eps**2 - log_std - 0.5 * np.log(2 * np.pi)
  raise ValueError(f"Unknown family {family!r}.")


def _quadrature(num_points: int, units: int) -> tuple[np.ndarray, np.ndarray]:
  """Gauss-Hermite nodes (N^units, units) and log weights of N(0, I)."""
  nodes, weights = np.polynomial.hermite_e.hermegauss(num_points)
  weights = weights / weights.sum()
  grid = np.stack(np.meshgrid(*[np.arange(num_points)] * units,
                              indexing="ij"), -1).reshape(-1, units)
  return nodes[grid], np.sum(np.log(weights)[grid], -1)


def exact_elbo(model, params: Any, x: Array, quadrature_points: int = 40
               ) -> Array:
  r"""E_{q(b | x)}[log p(x, b) - log q(b | x)], every b enumerated, (B,).

  For x of shape (B, D): sum over the N joint states of `latent_states` of
  q(b | x) (log p(x, b) - log q(b | x)); differentiable in params, so
  jax.grad of its mean is the exact gradient any estimator must match.

  A model with Gaussian layers (H units each, H small) is integrated by
  Gauss-Hermite quadrature on `quadrature_points` nodes per unit, layer by
  layer in the chain's order: z_l = mu_l + sigma_l t_n at the standard nodes
  t_n with fixed weights w_n, so the quadrature sum is differentiable in the
  parameters through the nodes (exact for the smooth integrands of the test
  models up to the quadrature's error, far below Monte Carlo's).
  """
  if any(layer.family == "gaussian" for layer in model.stochastic_layers()):
    return jax.vmap(lambda x_i: _integrate(model, params, x_i,
                                           quadrature_points))(x)
  states = latent_states(model)

  def one(x_i):
    xs = jnp.broadcast_to(x_i, (len(states[0]),) + x_i.shape)
    log_p, log_q = model.apply(params, xs, states, method="log_joint")
    return jnp.sum(jnp.exp(log_q) * (log_p - log_q))

  return jax.vmap(one)(x)


def exact_iw_bound(model, params: Any, x: Array, num_samples: int = 2
                   ) -> Array:
  r"""E[log (1/K) sum_k w_k] over K i.i.d. chains b_k ~ q(b | x), enumerated.

  Shape (B,); w_k = p(x, b_k) / q(b_k | x). Sums over the N^K ordered tuples
  of joint states (`latent_states`), so keep N^K small (K = 2 for tests).
  """
  states = latent_states(model)
  n = len(states[0])

  def one(x_i):
    xs = jnp.broadcast_to(x_i, (n,) + x_i.shape)
    log_p, log_q = model.apply(params, xs, states, method="log_joint")
    log_w = log_p - log_q
    grids = jnp.meshgrid(*[jnp.arange(n)] * num_samples, indexing="ij")
    idx = jnp.stack([g.ravel() for g in grids], -1)  # (N^K, K)
    bound = jax.nn.logsumexp(log_w[idx], -1) - jnp.log(num_samples)
    return jnp.sum(jnp.exp(jnp.sum(log_q[idx], -1)) * bound)

  return jax.vmap(one)(x)


def _integrate(model, params: Any, x: Array, quadrature_points: int) -> Array:
  """`exact_elbo` of one data point x (D,), discrete layers enumerated and
  Gaussian layers integrated by quadrature, in the chain's order."""
  log_w = jnp.zeros((1,))     # log of each branch's weight, (N,)
  above: list[Array] = []     # each layer's value on every branch, (N, *e)
  for l, layer in enumerate(model.stochastic_layers()):
    shape = tuple(layer.event_shape)
    xs = jnp.broadcast_to(x, (log_w.shape[0],) + x.shape)
    logits = model.apply(params, l, xs, tuple(above), method="layer_logits")
    if layer.family == "gaussian":
      nodes, log_nw = _quadrature(quadrature_points, int(np.prod(shape)))
      values = logits[:, None, ..., 0] + jnp.exp(logits[:, None, ..., 1]) * (
          nodes.reshape((1, -1) + shape))                         # (N, M, *e)
      new_log_w = log_w[:, None] + log_nw[None]
    else:
      (states,) = latent_states(_OneLayer(layer))
      values = jnp.broadcast_to(states[None], (log_w.shape[0],) + states.shape)
      log_prob = unit_log_prob(layer.family, logits[:, None], values)
      new_log_w = log_w[:, None] + jnp.sum(
          log_prob.reshape(log_prob.shape[:2] + (-1,)), -1)
    count = values.shape[1]
    above = [jnp.repeat(a, count, axis=0) for a in above]
    above.append(values.reshape((-1,) + shape))
    log_w = new_log_w.reshape(-1)
  xs = jnp.broadcast_to(x, (log_w.shape[0],) + x.shape)
  log_p, log_q = model.apply(params, xs, tuple(above), method="log_joint")
  return jnp.sum(jnp.exp(log_w) * (log_p - log_q))


class _OneLayer:
  """A stand-in model of one layer, for `latent_states`."""

  def __init__(self, layer):
    self._layer = layer

  def stochastic_layers(self):
    return (self._layer,)
