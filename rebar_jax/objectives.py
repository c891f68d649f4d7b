r"""Variational bounds on log p(x) and their evaluation over a data set.

For a latent-variable model p(x, b) with a recognition model q(b | x):

    ELBO(x)  = log p(x, b) - log q(b | x),                   b ~ q(b | x),
    IW_K(x)  = log (1/K) sum_{k=1}^K p(x, b_k) / q(b_k | x),  b_k ~ q iid,

with E[ELBO] = E[IW_1] <= E[IW_K] <= E[IW_{K+1}] <= log p(x) and
E[IW_K] -> log p(x) as K -> infinity (Burda et al. 2016, Thm. 1). The papers
(REBAR, RELAX, DisARM) report the ELBO and IW_K with K = 100..5000 on test data.

Models follow `rebar_jax.models.protocol` (SBN, CategoricalVAE or a user's
module). x is (..., data_dim); every bound returns the leading shape (...). One
key serves the whole leading shape.
"""
import functools
from typing import Any, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

from rebar_jax.models import protocol

Array = jax.Array
PRNGKey = jax.Array
Params = Any
Model = Any


log_weight = protocol.log_weight


def elbo(model: Model, params: Params, x: Array, key: PRNGKey) -> Array:
  r"""Single-sample ELBO log p(x, b) - log q(b | x), b ~ q(b | x).

  An unbiased estimate of E_q[log p(x, b) - log q(b | x)] <= log p(x).

  Args:
    model: a model following the protocol above.
    params: its variables.
    x: (..., data_dim).
    key: PRNG key.
  Returns:
    (...), one draw per data point.
  """
  chex.assert_axis_dimension(x, -1, model.data_dim)
  return log_weight(model, params, x, key)


def iw_bound(model: Model, params: Params, x: Array, key: PRNGKey,
             num_samples: int = 100, chunk_size: int = 100) -> Array:
  r"""Importance-weighted bound IW_K = log (1/K) sum_k p(x, b_k) / q(b_k | x).

  The K = num_samples draws come from keys `jax.random.split(key, K)` and are
  processed `chunk_size` at a time by a `lax.scan` carrying a running
  logsumexp, so memory is O(chunk_size * batch) for any K; a last partial chunk
  (K not a multiple of chunk_size) is handled after the scan. The draws do not
  depend on chunk_size, so every chunking gives the same value (up to float
  rounding). IW_1 is the ELBO's distribution; E[IW_K] rises to log p(x) with K
  (Burda et al. 2016).

  Args:
    model: a model following the protocol above.
    params: its variables.
    x: (..., data_dim).
    key: PRNG key.
    num_samples: K >= 1 (static).
    chunk_size: draws per chunk >= 1 (static); clipped to K.
  Returns:
    (...), one draw of the bound per data point.
  """
  chex.assert_axis_dimension(x, -1, model.data_dim)
  for name, value in (("num_samples", num_samples), ("chunk_size", chunk_size)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be a positive Python int, got {value!r}.")
  chunk_size = min(int(chunk_size), int(num_samples))
  num_chunks, remainder = divmod(int(num_samples), chunk_size)
  keys = jax.random.split(key, num_samples)

  def chunk_lse(chunk_keys: Array) -> Array:
    lw = jax.vmap(lambda k: log_weight(model, params, x, k))(chunk_keys)
    return jax.nn.logsumexp(lw, axis=0)

  def step(lse: Array, chunk_keys: Array) -> tuple[Array, None]:
    return jnp.logaddexp(lse, chunk_lse(chunk_keys)), None

  full = keys[:num_chunks * chunk_size].reshape(
      (num_chunks, chunk_size) + keys.shape[1:])
  lse = chunk_lse(full[0])
  if num_chunks > 1:
    lse, _ = jax.lax.scan(step, lse, full[1:])
  if remainder:
    lse = jnp.logaddexp(lse, chunk_lse(keys[num_chunks * chunk_size:]))
  return lse - jnp.log(float(num_samples))


@functools.partial(
    jax.jit, static_argnames=("model", "num_samples", "chunk_size",
                              "dynamic_binarization"))
def _evaluate_batch(model: Model, params: Params, x: Array, index: Array,
                    key: PRNGKey, num_samples: int, chunk_size: int,
                    dynamic_binarization: bool) -> tuple[Array, Array]:
  """Per-point (ELBO, IW_K) for a batch; point n uses fold_in(key, n) only."""

  def one(x_n: Array, n: Array) -> tuple[Array, Array]:
    k = jax.random.fold_in(key, n)
    k_bin, k_elbo, k_iw = (jax.random.fold_in(k, i) for i in range(3))
    if dynamic_binarization:
      x_n = (jax.random.uniform(k_bin, x_n.shape) < x_n).astype(x_n.dtype)
    return (elbo(model, params, x_n, k_elbo),
            iw_bound(model, params, x_n, k_iw, num_samples, chunk_size))

  return jax.vmap(one)(x, index)


def evaluate(model: Model, params: Params, data: Any, key: PRNGKey,
             num_samples: int = 100, batch_size: int = 100,
             chunk_size: Optional[int] = None,
             dynamic_binarization: bool = False) -> dict[str, float]:
  r"""Means over a data set of the single-sample ELBO and of IW_K.

  Data point n (row n of `data`) draws all its randomness from
  fold_in(key, n): its binarisation (x ~ Bernoulli(data[n]) when
  `dynamic_binarization`), its ELBO sample and its K importance samples. The
  result therefore depends only on (params, data, key, K), not on batch_size or
  chunk_size, and a fixed key makes bounds comparable across checkpoints. The
  last batch is padded (and the padding discarded) so the jitted batch function
  is traced once; the model must be hashable (both models here are).

  Args:
    model: a model following the protocol above.
    params: its variables.
    data: (N, data_dim) array of binary data, or of probabilities in [0, 1]
      with dynamic_binarization=True.
    key: PRNG key for the whole evaluation.
    num_samples: K of the IW bound.
    batch_size: data points per jitted call.
    chunk_size: importance samples per scan step (memory O(chunk * batch));
      defaults to min(K, 20) on CPU, where a smaller working set is faster
      (IW-100 of the linear SBN, batches of 100: 0.96 ms per point at 20
      against 2.1 ms at 100, on this project's 2-core machine), and to
      min(K, 100) on accelerators.
    dynamic_binarization: binarize each point with its own fixed key first.
  Returns:
    {'elbo': mean ELBO, 'iw_bound': mean IW_K} as Python floats (nats).
  """
  data = np.asarray(data, np.float32)
  chex.assert_rank(data, 2)
  chex.assert_axis_dimension(data, 1, model.data_dim)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  n = data.shape[0]
  if n == 0:
    raise ValueError("evaluate needs at least one data point.")
  if chunk_size is None:
    chunk_size = min(num_samples,
                     20 if jax.default_backend() == "cpu" else 100)
  batch_size = min(batch_size, n)
  outputs = []  # device arrays, fetched at the end (dispatch stays async)
  for start in range(0, n, batch_size):
    xb = data[start:start + batch_size]
    valid = xb.shape[0]
    if valid < batch_size:
      xb = np.concatenate(
          [xb, np.zeros((batch_size - valid, data.shape[1]), np.float32)])
    index = np.arange(start, start + batch_size, dtype=np.int32)
    outputs.append(
        (_evaluate_batch(model, params, jnp.asarray(xb), jnp.asarray(index),
                         key, num_samples, chunk_size, dynamic_binarization),
         valid))
  totals = np.zeros(2, np.float64)
  for (e, w), valid in outputs:
    totals += [np.sum(np.asarray(e, np.float64)[:valid]),
               np.sum(np.asarray(w, np.float64)[:valid])]
  return {"elbo": float(totals[0] / n), "iw_bound": float(totals[1] / n)}
