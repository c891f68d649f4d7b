"""Tiny models whose latent states can all be enumerated (shared by tests)."""
import itertools

import jax.numpy as jnp
import numpy as np

from rebar_jax import models


def binary_states(dim: int) -> np.ndarray:
  """All 2^dim binary vectors, (2^dim, dim) float32."""
  return ((np.arange(2**dim)[:, None] >> np.arange(dim)) & 1).astype(np.float32)


def all_latents(model):
  """Every latent state of a tiny model, stacked on a leading axis of size S."""
  if isinstance(model, models.SBN):
    states = binary_states(model.num_latents)
    idx = np.array(list(itertools.product(range(len(states)),
                                          repeat=model.num_layers)))
    return tuple(jnp.asarray(states[idx[:, l]]) for l in range(model.num_layers))
  eye = np.eye(model.num_classes, dtype=np.float32)
  idx = np.array(list(itertools.product(range(model.num_classes),
                                        repeat=model.num_vars)))
  return jnp.asarray(eye[idx])  # (C^V, V, C)
