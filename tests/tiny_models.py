"""Tiny models whose latent states can all be enumerated (shared by tests)."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rebar_jax import models
from rebar_jax import testing
from rebar_jax.models import protocol


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


class TwoLayer(nn.Module):
  """q(a | x) q(c | a) and p(a) p(c | a) p(x | c), any two families.

  Every map is one dense layer; a Gaussian layer's "logits" are its mean and
  log standard deviation (`rebar_jax.estimators.gaussian`). Small enough to
  integrate exactly (`rebar_jax.testing.exact_elbo`: enumeration of the
  discrete layers, quadrature over a one-unit Gaussian layer).
  """
  families: tuple[str, str]
  shapes: tuple[tuple[int, ...], tuple[int, ...]]
  data_dim: int = 3
  train_mean: Any = None

  def stochastic_layers(self):
    return tuple(protocol.StochasticLayer(f, s)
                 for f, s in zip(self.families, self.shapes))

  def _shape(self, l):
    extra = (2,) if self.families[l] == "gaussian" else ()
    return tuple(self.shapes[l]) + extra

  def setup(self):
    size = lambda l: int(np.prod(self._shape(l)))
    self.encoder_0 = nn.Dense(size(0))
    self.encoder_1 = nn.Dense(size(1))
    self.decoder_1 = nn.Dense(size(1))
    self.decoder_x = nn.Dense(self.data_dim)
    self.prior = self.param("prior", nn.initializers.normal(1.0),
                            self._shape(0))

  def _grid(self, l, flat):
    return flat.reshape(flat.shape[:-1] + self._shape(l))

  def _flat(self, l, b):
    return b.reshape(b.shape[:b.ndim - len(self.shapes[l])] + (-1,))

  def layer_logits(self, layer, x, above):
    if layer == 0:
      return self._grid(0, self.encoder_0(2.0 * x - 1.0))
    return self._grid(1, self.encoder_1(self._flat(0, above[0])))

  def log_joint(self, x, bs):
    a, c = bs
    logits_q = (self.layer_logits(0, x, ()), self.layer_logits(1, x, (a,)))
    logits_p = (jnp.broadcast_to(self.prior, logits_q[0].shape),
                self._grid(1, self.decoder_1(self._flat(0, a))))
    total = lambda logits: sum(
        jnp.sum(self._flat(l, testing.unit_log_prob(f, lg, b)), -1)
        for l, (f, lg, b) in enumerate(zip(self.families, logits, bs)))
    x_logits = self.decoder_x(self._flat(1, c))
    log_p = total(logits_p) + jnp.sum(
        x * x_logits - jax.nn.softplus(x_logits), -1)
    return log_p, total(logits_q)
