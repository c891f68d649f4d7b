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
