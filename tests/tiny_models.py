"""Tiny models whose latent states can all be enumerated (shared by tests)."""
import numpy as np

from rebar_jax import models
from rebar_jax import testing


def binary_states(dim: int) -> np.ndarray:
  """All 2^dim binary vectors, (2^dim, dim) float32."""
  return ((np.arange(2**dim)[:, None] >> np.arange(dim)) & 1).astype(np.float32)


def all_latents(model):
  """Every latent state of a tiny model, stacked on a leading axis of size S.

  `rebar_jax.testing.latent_states`, as the model's log_joint takes it: a
  tuple of layers for the SBN, the one array (C^V, V, C) for the VAE.
  """
  states = testing.latent_states(model)
  return states if isinstance(model, models.SBN) else states[0]
