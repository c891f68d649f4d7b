r"""Diagnostics of a gradient estimator during training (as OVIS reports them).

* Encoder-gradient variance and signal-to-noise ratio: N independent draws of
  the model gradient at the same parameters and batch; per encoder parameter j,
  mean m_j and standard deviation s_j across draws;
      log-variance = log mean_j s_j^2,    SNR = mean_j |m_j| / s_j
  (Rainforth et al. 2018; Lievin et al. 2020, Sec. 6).
* Effective sample size of K importance weights w_k = p(x, b_k) / q(b_k | x):
      ESS = (sum_k w_k)^2 / sum_k w_k^2 in [1, K], averaged over data points.
* Active units (Burda et al. 2016): a latent unit u is active when
  Cov_x(E_q[b_u | x]) > 0.01 over the data points (first stochastic layer; for
  a categorical variable, the trace of the covariance of its probabilities).
"""
from typing import Any

import jax
import jax.numpy as jnp

from rebar_jax import gradients
from rebar_jax.models import protocol

Array = jax.Array


def encoder_leaves(grads) -> Array:
  """The encoder part of a parameter pytree, flattened to one vector."""
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  leaves = [leaf.ravel() for path, leaf in flat
            if any("encoder" in str(getattr(p, "key", "")) for p in path)]
  return jnp.concatenate(leaves)


def gradient_statistics(model, spec: gradients.EstimatorSpec, params: Any,
                        est_state: gradients.EstimatorState, x: Array,
                        key: Array, num_draws: int = 16,
                        step: Any = None) -> dict[str, Array]:
  """Log-variance and SNR of the encoder gradient over `num_draws` draws.

  `step` is the training step the estimator's schedules (the Renyi warm-up)
  are evaluated at (`gradients.model_gradients`).

  The draws run one after another (`lax.map`): the program holds one model
  gradient, not a batch of them: the diagnostics program of the mixed example
  model compiled in 5.7 s instead of 6.7 s on this project's 2-core CPU (one
  measurement each), and only one draw's memory is live at a time.
  """
  keys = jax.random.split(key, num_draws)
  draws = jax.lax.map(lambda k: encoder_leaves(gradients.model_gradients(
      model, spec, params, est_state, x, k, step)[0]), keys)  # (N, P)
  mean, std = jnp.mean(draws, 0), jnp.std(draws, 0, ddof=1)
  snr = jnp.where(std > 0, jnp.abs(mean) / jnp.where(std > 0, std, 1.0), 0.0)
  return {"grad_log_variance": jnp.log(jnp.mean(jnp.square(std))),
          "grad_snr": jnp.mean(snr)}


def effective_sample_size(model, params: Any, x: Array, key: Array,
                          num_samples: int) -> Array:
  """Mean over data points of (sum w)^2 / sum w^2 for K = num_samples."""
  def log_weights(x_i, k):
    return jax.vmap(lambda kk: protocol.log_weight(
        model, params, x_i, kk))(jax.random.split(k, num_samples))

  log_w = jax.vmap(log_weights)(x, jax.random.split(key, x.shape[0]))
  ess = jnp.exp(2 * jax.nn.logsumexp(log_w, -1)
                - jax.nn.logsumexp(2 * log_w, -1))
  return jnp.mean(ess)


def active_units(model, params: Any, x: Array, threshold: float = 0.01
                 ) -> Array:
  """Number of first-layer units (variables), Cov_x(E_q[b | x]) > threshold."""
  family = protocol.families(model)[0]
  probs = family.mean(model.apply(params, 0, x, (), method="layer_logits"))
  activity = jnp.var(probs, axis=0)  # (*event)
  if family.EVENT_NDIM:  # the trace of a variable's covariance
    activity = jnp.sum(activity, axis=tuple(range(-family.EVENT_NDIM, 0)))
  return jnp.sum(activity > threshold)


def make_diagnostics(model, spec: gradients.EstimatorSpec,
                     num_draws: int = 16, num_iw_samples: int = 100):
  """Jitted (params, est_state, x_batch, x_many, key, step) -> diagnostics.

  Gradient statistics and ESS on `x_batch` (a training batch), active units
  over `x_many` (more data points, e.g. a validation subset).
  """
  @jax.jit
  def run(params, est_state, x_batch, x_many, key, step):
    k_grad, k_ess = jax.random.split(key)
    out = gradient_statistics(model, spec, params, est_state, x_batch, k_grad,
                              num_draws, step)
    out["ess"] = effective_sample_size(model, params, x_batch, k_ess,
                                       num_iw_samples)
    out["active_units"] = active_units(model, params, x_many)
    return out

  return run
