r"""Bring your own model: a two-layer VAE mixing categorical and Bernoulli latents.

Recognition model, top layer first:

    q(c | x) = prod_v Cat(c_v; softmax(E_c(x))_v),     c: (V, C) one-hot,
    q(h | c) = prod_j Bernoulli(h_j; sigmoid(E_h(c))_j),  h: (H,) in {0, 1},

generative model p(h) p(c | h) p(x | c), with p(h) = Bernoulli(sigmoid(a)),
p(c | h) = Cat(softmax(D_c(h))), p(x | c) = Bernoulli(sigmoid(D_x(c))); every
E and D is one dense layer. The three methods of the model protocol
(rebar_jax/models/protocol.py) are all the library needs: sampling, the
importance-weighted bounds and training with any estimator are written once
against them. Train it with one estimator per family of layers:

    python -m rebar_jax.train --config=configs/sbn_mnist.py \
        --config.model=examples/custom_model.py:make \
        --config.estimator=bernoulli:disarm,categorical:reinforce_loo

or with one estimator for every layer (--config.estimator=relax). H is
config.num_latents; V and C are the module's fields.

REBAR, RELAX and Concrete call `log_joint` on relaxed samples (points of
[0, 1] or of the simplex) and differentiate it there, so it must be
continuous in b: no floor, round, comparison or `where` on b. The trainer
checks the protocol's shapes (`rebar_jax.models.protocol.check`) and, for
those estimators, probes the relaxed learning signal for jumps
(`rebar_jax.estimators.continuity`) before it trains a model of yours.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rebar_jax.models import protocol
from rebar_jax.models.categorical_vae import categorical_log_prob
from rebar_jax.models.sbn import bernoulli_log_prob


class MixedVAE(nn.Module):
  """q(c | x) q(h | c) and p(h) p(c | h) p(x | c); see the module docstring."""
  data_dim: int
  num_units: int = 50      # H
  num_vars: int = 10       # V
  num_classes: int = 10    # C
  train_mean: Optional[Any] = None  # the protocol's field; unused here

  def setup(self):
    v, c = self.num_vars, self.num_classes
    self.encoder_c = nn.Dense(v * c)
    self.encoder_h = nn.Dense(self.num_units)
    self.prior_h = self.param("prior_h", nn.initializers.zeros,
                              (self.num_units,))
    self.decoder_c = nn.Dense(v * c)
    self.decoder_x = nn.Dense(self.data_dim)

  def _grid(self, flat: jax.Array) -> jax.Array:
    return flat.reshape(flat.shape[:-1] + (self.num_vars, self.num_classes))

  def _flat(self, c: jax.Array) -> jax.Array:
    return c.reshape(c.shape[:-2] + (self.num_vars * self.num_classes,))

  # The model protocol.

  def stochastic_layers(self) -> tuple[protocol.StochasticLayer, ...]:
    return (protocol.StochasticLayer("categorical",
                                     (self.num_vars, self.num_classes)),
            protocol.StochasticLayer("bernoulli", (self.num_units,)))

  def layer_logits(self, layer: int, x: jax.Array,
                   above: Sequence[jax.Array]) -> jax.Array:
    if layer == 0:
      return self._grid(self.encoder_c(2.0 * x - 1.0))
    return self.encoder_h(self._flat(above[0]))

  def log_joint(self, x: jax.Array, bs: Sequence[jax.Array]
                ) -> tuple[jax.Array, jax.Array]:
    c, h = bs
    log_q = (categorical_log_prob(c, self.layer_logits(0, x, ()))
             + bernoulli_log_prob(h, self.layer_logits(1, x, (c,))))
    log_p = (bernoulli_log_prob(h, jnp.broadcast_to(self.prior_h, h.shape))
             + categorical_log_prob(c, self._grid(self.decoder_c(h)))
             + bernoulli_log_prob(x, self.decoder_x(self._flat(c))))
    return log_p, log_q


def make(config, dataset) -> MixedVAE:
  """The factory `--config.model=examples/custom_model.py:make` calls."""
  return MixedVAE(data_dim=dataset.data_dim, num_units=config.num_latents)
