"""Exact expectations and gradients by enumeration, the ground truth for tests.

For b ~ Bernoulli(sigmoid(logits)) with D = logits.size latents,

    E[f(b)] = sum_{b in {0,1}^D} p(b) f(b),
    p(b) = prod_i sigma(l_i)^b_i sigma(-l_i)^(1-b_i),

and the gradient w.r.t. the logits is the gradient of that finite sum (f does
not depend on the logits). For categorical one-hot b with logits (..., C) the
sum runs over all C^D configurations. Cost is 2^D (C^D) evaluations of f:
keep D small (D <= 16 Bernoulli, C^D <= ~1e5 categorical).

Precision: the sums are accumulated in float64 (`jax.enable_x64` around the
enumeration): the states, the probabilities and f's arithmetic (f is called
on float64 states, so anything it computes from them is promoted) run in
float64 and the result is returned in the logits' dtype. In float32 the sum of
2^D terms lost about 0.5% of the gradient at D = 8..16 when f carried a
constant offset of 1e4 (tests/test_bernoulli.py, `OracleTest`); in float64
that error is below 1e-6. An f that casts to float32 internally keeps its own
rounding (only the accumulation is then float64).
"""
import itertools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def bernoulli_states(shape: tuple[int, ...], dtype=jnp.float32) -> Array:
  """All 2^D binary configurations, shape (2^D, *shape), in `dtype`."""
  d = int(np.prod(shape))
  if d > 20:
    raise ValueError(f"Refusing to enumerate 2^{d} states; keep D <= 20.")
  states = np.array(list(itertools.product([0.0, 1.0], repeat=d)), np.float64)
  return jnp.asarray(states.reshape((2**d,) + tuple(shape)), dtype)


def bernoulli_log_prob(logits: Array, b: Array) -> Array:
  """log p(b) = sum_i b_i log sigma(l_i) + (1-b_i) log sigma(-l_i), a scalar."""
  return jnp.sum(
      b * jax.nn.log_sigmoid(logits) + (1.0 - b) * jax.nn.log_sigmoid(-logits))


def _in_float64(fn: Callable[[Array], Array], logits: Array) -> Array:
  """fn(logits in float64) under jax.enable_x64, cast back to logits' dtype."""
  logits = jnp.asarray(logits)
  with jax.enable_x64(True):
    out = fn(jnp.asarray(logits, jnp.float64))
  return out.astype(logits.dtype)


def _bernoulli_expectation64(logits: Array, f: Callable[[Array], Array]
                             ) -> Array:
  states = bernoulli_states(jnp.shape(logits), jnp.float64)
  log_p = jax.vmap(bernoulli_log_prob, in_axes=(None, 0))(logits, states)
  values = jax.vmap(f)(states)
  return jnp.sum(jnp.exp(log_p) * values)


def bernoulli_expectation(logits: Array, f: Callable[[Array], Array]) -> Array:
  """E_{b ~ Bernoulli(sigmoid(logits))}[f(b)], exactly (float64 sums)."""
  return _in_float64(lambda l: _bernoulli_expectation64(l, f), logits)


def bernoulli_gradient(logits: Array, f: Callable[[Array], Array]) -> Array:
  """The exact gradient d/dlogits E[f(b)], shape of `logits` (float64 sums)."""
  return _in_float64(jax.grad(lambda l: _bernoulli_expectation64(l, f)),
                     logits)


def categorical_states(shape: tuple[int, ...], dtype=jnp.float32) -> Array:
  """All C^D one-hot configurations for logits of `shape` = (..., C).

  Returns shape (C^D, *shape), in `dtype`, with D = prod(shape[:-1]).
  """
  num_classes = shape[-1]
  d = int(np.prod(shape[:-1]))
  if num_classes**d > 2**20:
    raise ValueError(f"Refusing to enumerate {num_classes}^{d} states.")
  idx = np.array(list(itertools.product(range(num_classes), repeat=d)))
  idx = idx.reshape((-1,) + tuple(shape[:-1]))
  return jnp.asarray(np.eye(num_classes, dtype=np.float64)[idx], dtype)


def categorical_log_prob(logits: Array, b: Array) -> Array:
  """log p(b) = sum_d <b_d, log_softmax(l_d)> for one-hot b, a scalar."""
  return jnp.sum(b * jax.nn.log_softmax(logits, axis=-1))


def _categorical_expectation64(logits: Array, f: Callable[[Array], Array]
                               ) -> Array:
  states = categorical_states(jnp.shape(logits), jnp.float64)
  log_p = jax.vmap(categorical_log_prob, in_axes=(None, 0))(logits, states)
  values = jax.vmap(f)(states)
  return jnp.sum(jnp.exp(log_p) * values)


def categorical_expectation(logits: Array,
                            f: Callable[[Array], Array]) -> Array:
  """E_{b ~ Categorical(softmax(logits))}[f(b)] with one-hot b, exactly."""
  return _in_float64(lambda l: _categorical_expectation64(l, f), logits)


def categorical_gradient(logits: Array, f: Callable[[Array], Array]) -> Array:
  """The exact gradient d/dlogits E[f(b)] for one-hot categorical b."""
  return _in_float64(jax.grad(lambda l: _categorical_expectation64(l, f)),
                     logits)
