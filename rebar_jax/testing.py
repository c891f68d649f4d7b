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
    raise ValueError(f"num_draws={num_draws} must be a multiple of chunk={chunk}.")
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


def exact_elbo(model, params: Any, x: Array) -> Array:
  r"""E_{q(b | x)}[log p(x, b) - log q(b | x)] by enumerating every b, (B,).

  For x of shape (B, D): sum over the N joint states of `latent_states` of
  q(b | x) (log p(x, b) - log q(b | x)); differentiable in params, so
  jax.grad of its mean is the exact gradient any estimator must match.
  """
  states = latent_states(model)

  def one(x_i):
    xs = jnp.broadcast_to(x_i, (len(states[0]),) + x_i.shape)
    log_p, log_q = model.apply(params, xs, states, method="log_joint")
    return jnp.sum(jnp.exp(log_q) * (log_p - log_q))

  return jax.vmap(one)(x)


def exact_iw_bound(model, params: Any, x: Array, num_samples: int = 2
                   ) -> Array:
  r"""E[log (1/K) sum_k w_k] over K i.i.d. chains b_k ~ q(b | x), enumerated, (B,).

  w_k = p(x, b_k) / q(b_k | x). Sums over the N^K ordered tuples of joint
  states (`latent_states`), so keep N^K small (K = 2 for tests).
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
