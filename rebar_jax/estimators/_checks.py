"""Input validation shared by the estimators.

Every check runs at trace time on static information (shapes, dtypes, Python
numbers), so it costs nothing inside `jit` and never forces a host sync. A value
that is only known at run time (a traced temperature, say) is not checked;
non-finite logits, which are only known at run time, are propagated instead:
`nan_if_nonfinite` makes an estimator's output all NaN.
"""
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def check_key(key: Any, name: str = "key") -> None:
  """Raises TypeError unless `key` is a JAX PRNG key (typed or uint32[2])."""
  dtype = getattr(key, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if jnp.shape(key) != ():
      raise TypeError(
          f"{name} must be a single PRNG key, got a batch of shape "
          f"{jnp.shape(key)}; vmap the estimator over jax.random.split(key, n)."
      )
    return
  if dtype == jnp.uint32 and jnp.shape(key) == (2,):
    return
  raise TypeError(
      f"{name} must be a JAX PRNG key (jax.random.key(seed) or "
      f"jax.random.PRNGKey(seed)), got {type(key).__name__} with "
      f"dtype={dtype} and "
      f"shape={jnp.shape(key) if dtype is not None else None}."
  )


def check_logits(logits: Any, min_rank: int = 0) -> jax.Array:
  """Returns `logits` as a float array; raises on non-float or low rank."""
  logits = jnp.asarray(logits)
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise TypeError(
        f"logits must be a floating-point array, got dtype {logits.dtype}; "
        "cast with logits.astype(jnp.float32)."
    )
  if logits.ndim < min_rank:
    raise ValueError(
        f"logits must have rank >= {min_rank} (last axis = categories), got "
        f"shape {logits.shape}."
    )
  return logits


def check_noise(noise: Any, logits: jax.Array) -> jax.Array:
  """Returns `noise` in the logits' dtype; raises on a shape mismatch."""
  noise = jnp.asarray(noise)
  if noise.shape != logits.shape:
    raise ValueError(
        f"noise must have the shape of the logits {logits.shape}, got "
        f"{noise.shape}: pass the family's noise(key, logits.shape) of this "
        "draw (one data point's, when the estimator is vmapped).")
  return noise.astype(logits.dtype)


def check_positive(name: str, value: Any) -> None:
  """Raises ValueError if `value` is concrete and not finite and > 0
  everywhere (an infinite temperature would give a zero gradient)."""
  if isinstance(value, jax.core.Tracer):
    return
  arr = np.asarray(value)
  if not np.all(np.isfinite(arr) & (arr > 0)):
    raise ValueError(f"{name} must be > 0 and finite, got {value!r}.")


def check_int(name: str, value: Any, minimum: int) -> None:
  """Raises ValueError unless `value` is a Python int >= `minimum`."""
  if not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def scalar_fn(f: Callable[..., Any],
              name: str = "f") -> Callable[..., jax.Array]:
  """Wraps `f` so that a non-scalar output raises a clear error when traced."""
  if not callable(f):
    raise TypeError(f"{name} must be callable, got {type(f).__name__}.")

  def wrapped(*args):
    out = jnp.asarray(f(*args))
    if out.shape != ():
      raise ValueError(
          f"{name} must return a scalar, got shape {out.shape}. Reduce it "
          "(e.g. jnp.sum) or, for a batch of independent data points, vmap the "
          "estimator with one f per data point."
      )
    if not jnp.issubdtype(out.dtype, jnp.floating):
      raise TypeError(
          f"{name} must return a float, got dtype {out.dtype}; cast its "
          "output (e.g. .astype(jnp.float32)), and keep it a differentiable "
          "function of its input for the relaxed estimators (REBAR, RELAX).")
    return out

  return wrapped


def nan_if_nonfinite(estimator: Callable[..., Any]) -> Callable[..., Any]:
  """Decorates est(key, logits, f, ...) to return all NaN for non-finite logits.

  If any entry of `logits` is NaN or +-inf, every entry of the output (every
  leaf of an output pytree) is NaN; otherwise the output is unchanged. A NaN
  estimate cannot be mistaken for a gradient, whereas the estimators' own
  arithmetic would give finite values for some (ARM's thresholds compare
  False with NaN, ARSM's swaps never fire) and NaN for others. The check is one
  reduction and a select, traced like the rest (no host sync, works under jit
  and vmap: per member of a vmapped batch); the select passes gradients
  through unchanged where the logits are finite. Validation errors (non-float
  logits, a bad key) are raised first, by the estimator.
  """

  @functools.wraps(estimator)
  def wrapped(key, logits, f, *args, **kwargs):
    out = estimator(key, logits, f, *args, **kwargs)
    bad = jnp.logical_not(jnp.all(jnp.isfinite(jnp.asarray(logits))))
    return jax.tree.map(lambda x: jnp.where(bad, jnp.nan, x), out)

  return wrapped


def float32_inside(estimator: Callable[..., Any]) -> Callable[..., Any]:
  """Decorates est(key, logits, f, ...) to compute in float32 for half logits.

  Policy for float16 and bfloat16 logits: the estimator runs on the logits
  cast to float32 (so its noise, samples and arithmetic are float32, and f
  is called on float32 samples, hard or relaxed), and every floating leaf of
  its output is cast back to the logits' dtype. The estimate is then the
  float32 estimate at the half-precision logits' values, rounded once: a
  relative error of at most 2^-11 (float16) or 2^-8 (bfloat16) per draw,
  and the mean is the float32 estimator's, unbiased where that one is.
  Computing in half precision instead failed in several ways: `ndtri`
  refuses it (ARMS's Gaussian copula raised a TypeError), bfloat16's 8
  significant bits biased CARMS (z = 8 to 17 over 2^14 draws on the
  problems of tests/test_categorical.py) and Gaussian leave-one-out
  REINFORCE (z = 6), and RODEO and most categorical estimators returned
  float32 anyway. float32 and float64 logits (and non-float ones, which the
  estimator refuses) pass through untouched (tests/test_precision.py).
  """

  @functools.wraps(estimator)
  def wrapped(key, logits, f, *args, **kwargs):
    dtype = getattr(logits, "dtype", None)
    if (dtype is None or not jnp.issubdtype(dtype, jnp.floating)
        or jnp.finfo(dtype).bits >= 32):
      return estimator(key, logits, f, *args, **kwargs)
    out = estimator(key, jnp.asarray(logits, jnp.float32), f, *args,
                    **kwargs)
    return jax.tree.map(
        lambda x: x.astype(dtype)
        if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, out)

  return wrapped


def estimator(fn: Callable[..., Any]) -> Callable[..., Any]:
  """The decorator of every registered estimator est(key, logits, f, ...).

  `float32_inside` (half-precision logits computed in float32, the output
  returned in the logits' dtype) around `nan_if_nonfinite` (all NaN for
  non-finite logits).
  """
  return float32_inside(nan_if_nonfinite(fn))
