r"""A VAE with V independent categorical latents of C classes.

    q(b | x) = prod_v Cat(b_v; softmax(enc(x)_v)),
    p(x, b) = p(b) prod_d Bernoulli(x_d; sigmoid(dec(b)_d)),
    p(b) = prod_v Cat(b_v; 1/C)   or   prod_v Cat(b_v; softmax(prior_logits_v)),

with b_v one-hot in {0, 1}^C, enc an MLP D-512-256-(V C) and dec an MLP
(V C)-256-512-D, both ReLU (Jang et al. 2017, Sec. 4.3; Yin et al. 2019, ARSM,
Sec. 5 use V = 20..30, C = 10). The encoder input is x - train_mean; the bias of
the decoder output starts at logit(clip(train_mean, 1e-3, 1 - 1e-3)).

Shapes: x is (..., D) and b is (..., V, C); every log-probability sums over
(V, C) (and over D for x) and has the leading shape (...). Relaxed b (points of
the simplex, e.g. Gumbel-softmax samples) are accepted: the categorical
log-probability is then sum_c b_c log softmax(l)_c, linear in b.
"""
from typing import Any, Optional, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from rebar_jax.models import protocol
from rebar_jax.models import sbn

Array = jax.Array
PRNGKey = jax.Array
Params = Any


def categorical_log_prob(b: Array, logits: Array) -> Array:
  """sum_{v, c} b_{vc} log softmax(l_v)_c over the last two axes.

  Args:
    b: (..., V, C) one-hot or relaxed.
    logits: (..., V, C), broadcastable against b.
  Returns:
    (...).
  """
  return jnp.sum(b * jax.nn.log_softmax(logits, axis=-1), axis=(-2, -1))


class CategoricalVAE(nn.Module):
  """Categorical-latent VAE with Bernoulli observations.

  Attributes:
    num_vars: V.
    num_classes: C.
    hidden: widths of the encoder's hidden layers; the decoder mirrors them.
    data_dim: D.
    learned_prior: learn prior logits (V, C), initialised to 0 (uniform), or
      keep the fixed uniform prior.
    train_mean: mean training pixel (D,) or None; stored as a tuple (hashable).
  """
  num_vars: int = 30
  num_classes: int = 10
  hidden: Sequence[int] = (512, 256)
  data_dim: int = 784
  learned_prior: bool = False
  train_mean: Optional[Any] = None

  def __post_init__(self):
    object.__setattr__(self, "train_mean",
                       sbn.train_mean_tuple(self.train_mean))
    object.__setattr__(self, "hidden", tuple(self.hidden))
    super().__post_init__()

  def setup(self):
    latent = self.num_vars * self.num_classes
    self.encoder_layers = ([nn.Dense(h) for h in self.hidden]
                           + [nn.Dense(latent)])
    self.decoder_layers = [nn.Dense(h) for h in reversed(self.hidden)] + [
        nn.Dense(self.data_dim,
                 bias_init=sbn.output_bias_init(self.train_mean, self.data_dim))
    ]
    if self.learned_prior:
      self.prior_logits = self.param(
          "prior_logits", nn.initializers.zeros,
          (self.num_vars, self.num_classes))
    else:
      self.prior_logits = jnp.zeros((self.num_vars, self.num_classes))

  def _check(self, x: Array, b: Array) -> None:
    chex.assert_axis_dimension(x, -1, self.data_dim)
    chex.assert_shape(b, x.shape[:-1] + (self.num_vars, self.num_classes))

  def encoder_logits(self, x: Array) -> Array:
    """Logits of q(b | x), (..., D) -> (..., V, C)."""
    chex.assert_axis_dimension(x, -1, self.data_dim)
    h = sbn.centre(x, self.train_mean, self.data_dim)
    for layer in self.encoder_layers[:-1]:
      h = nn.relu(layer(h))
    h = self.encoder_layers[-1](h)
    return h.reshape(h.shape[:-1] + (self.num_vars, self.num_classes))

  def decoder_logits(self, b: Array) -> Array:
    """Logits of p(x | b), (..., V, C) -> (..., D)."""
    h = b.reshape(b.shape[:-2] + (self.num_vars * self.num_classes,))
    for layer in self.decoder_layers[:-1]:
      h = nn.relu(layer(h))
    return self.decoder_layers[-1](h)

  def log_q(self, x: Array, b: Array) -> Array:
    """log q(b | x), shape x.shape[:-1]."""
    self._check(x, b)
    return categorical_log_prob(b, self.encoder_logits(x))

  def log_prior(self, b: Array) -> Array:
    """log p(b) (V log(1/C) for the uniform prior, one-hot b), shape (...)."""
    return categorical_log_prob(b, self.prior_logits)

  def log_p(self, x: Array, b: Array) -> Array:
    """log p(x, b) = log p(x | b) + log p(b), shape x.shape[:-1]."""
    self._check(x, b)
    return (sbn.bernoulli_log_prob(x, self.decoder_logits(b))
            + self.log_prior(b))

  def __call__(self, x: Array, b: Array) -> tuple[Array, Array]:
    """(log p(x, b), log q(b | x)); creates every parameter under `init`."""
    return self.log_p(x, b), self.log_q(x, b)

  # The model protocol (`rebar_jax.models.protocol`).

  def stochastic_layers(self) -> tuple[protocol.StochasticLayer, ...]:
    """One categorical layer of V variables with C classes."""
    return (protocol.StochasticLayer("categorical",
                                     (self.num_vars, self.num_classes)),)

  def layer_logits(self, layer: int, x: Array,
                   above: Sequence[Array]) -> Array:
    """Logits of q(b | x), (..., V, C); layer is 0 and above is ()."""
    del layer, above
    return self.encoder_logits(x)

  def log_joint(self, x: Array, bs: Sequence[Array]) -> tuple[Array, Array]:
    """(log p(x, b), log q(b | x)) for bs = (b,)."""
    (b,) = bs
    return self(x, b)


def sample_q(model: CategoricalVAE, params: Params, x: Array,
             key: PRNGKey) -> tuple[Array, Array]:
  """b ~ q(b | x) by Gumbel-max, b_v = onehot(argmax_c l_vc + g_vc), and log q.

  Args:
    model, params: the VAE and its variables.
    x: (..., D).
    key: one PRNG key.
  Returns:
    b: (..., V, C) one-hot; log_q: (...).
  """
  (b,) = protocol.sample(model, params, x, key)
  # flax types apply's result as (output, mutated variables) too; no mutable.
  log_q = model.apply(params, x, b, method=CategoricalVAE.log_q)
  return b, log_q  # type: ignore[return-value]
