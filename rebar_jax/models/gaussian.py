r"""Models with Gaussian latents: a linear-Gaussian test model, a Gaussian VAE.

`LinearGaussian` is the model of Rainforth et al. (2018, Sec. 4), used by
Tucker et al. (2019, DReG) and Lievin et al. (2020, OVIS, Fig. 1) to study
the signal-to-noise ratio of IWAE gradients against K:

    p(z) = N(z; mu, I),   p(x | z) = N(x; z, I),   z, x in R^D,
    q(z | x) = N(z; A x + b, s^2 I)     (s^2 = 2/3 in the papers, fixed),

whose marginal and posterior are known in closed form,

    p(x) = N(x; mu, 2 I),   p(z | x) = N(z; (mu + x) / 2, I / 2),

so the optimum of the inference network is A = I / 2, b = mu / 2 (and s^2 =
1/2 makes q exact: every log-weight then equals log p(x)). theta = mu,
phi = (A, b).

`GaussianVAE` is the one-layer Gaussian VAE of Burda et al. (2016) and of
OVIS's Fig. 4: q(z | x) = N(enc(x)), p(z) = N(0, I), p(x | z) =
prod_d Bernoulli(x_d; sigmoid(dec(z)_d)), MLPs with tanh units.

Both follow `rebar_jax.models.protocol` with one "gaussian" layer: the layer's
"logits" are (..., H, 2), the mean and log standard deviation of each unit.
"""
import math
from typing import Any, Optional, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from rebar_jax.estimators import gaussian
from rebar_jax.models import protocol
from rebar_jax.models import sbn

Array = jax.Array

_LOG_2PI = math.log(2 * math.pi)


def normal_log_prob(x: Array, mean: Array | float, variance: Any) -> Array:
  """log N(x; mean, variance I), summed over the last axis."""
  return jnp.sum(-0.5 * (x - mean)**2 / variance
                 - 0.5 * jnp.log(variance) - 0.5 * _LOG_2PI, axis=-1)


class LinearGaussian(nn.Module):
  """The linear-Gaussian model of Rainforth et al. (2018); see the module doc.

  Attributes:
    dim: D, the size of x and of z.
    q_variance: s^2, the fixed variance of q (2/3 in the papers; 1/2 is the
      true posterior's).
  Parameters: "prior_mean" mu (D,); "encoder" a Dense layer, mean = x @ kernel
    + bias (so A = kernel^T).
  """
  dim: int = 20
  q_variance: float = 2.0 / 3.0

  @property
  def data_dim(self) -> int:
    return self.dim

  @property
  def train_mean(self) -> None:
    return None

  def setup(self):
    self.prior_mean = self.param("prior_mean", nn.initializers.zeros,
                                 (self.dim,))
    self.encoder = nn.Dense(self.dim)

  def stochastic_layers(self) -> tuple[protocol.StochasticLayer, ...]:
    return (protocol.StochasticLayer("gaussian", (self.dim,)),)

  def layer_logits(self, layer: int, x: Array, above: Sequence[Array]) -> Array:
    """(..., D, 2): the mean A x + b and log s of q(z | x)."""
    del layer, above
    chex.assert_axis_dimension(x, -1, self.dim)
    mean = self.encoder(x)
    return gaussian.params_from(mean, jnp.full_like(
        mean, 0.5 * math.log(self.q_variance)))

  def log_joint(self, x: Array, bs: Sequence[Array]) -> tuple[Array, Array]:
    """(log p(x, z), log q(z | x)), each of shape x.shape[:-1]."""
    (z,) = bs
    log_p = (normal_log_prob(z, self.prior_mean, 1.0)
             + normal_log_prob(x, z, 1.0))
    log_q = jnp.sum(gaussian.log_prob(self.layer_logits(0, x, ()), z), -1)
    return log_p, log_q

  def __call__(self, x: Array, z: Array) -> tuple[Array, Array]:
    return self.log_joint(x, (z,))

  def log_marginal(self, x: Array) -> Array:
    """log p(x) = log N(x; mu, 2 I), exact, shape x.shape[:-1]."""
    return normal_log_prob(x, self.prior_mean, 2.0)

  def elbo(self, x: Array) -> Array:
    r"""The ELBO E_q[log p(x, z) - log q(z | x)] in closed form, (...).

    With q = N(m, s^2 I):
    E log p(z) = -sum ((m - mu)^2 + s^2) / 2 - D/2 log 2pi,
    E log p(x | z) = -sum ((x - m)^2 + s^2) / 2 - D/2 log 2pi, and the entropy
    D/2 log(2 pi e s^2).
    """
    m = self.encoder(x)
    s2 = self.q_variance
    return (jnp.sum(-0.5 * ((m - self.prior_mean)**2 + s2)
                    - 0.5 * ((x - m)**2 + s2), axis=-1)
            - self.dim * _LOG_2PI
            + 0.5 * self.dim * (_LOG_2PI + 1 + math.log(s2)))


def linear_gaussian_optimum(prior_mean: Any) -> dict:
  """The variables of `LinearGaussian` at q's optimum: A = I / 2, b = mu / 2."""
  prior_mean = jnp.asarray(prior_mean, jnp.float32)
  dim = prior_mean.shape[0]
  return {"params": {"prior_mean": prior_mean,
                     "encoder": {"kernel": 0.5 * jnp.eye(dim),
                                 "bias": 0.5 * prior_mean}}}


class GaussianVAE(nn.Module):
  """A VAE with H diagonal-Gaussian latents and Bernoulli observations.

      q(z | x) = N(z; mu(x), diag sigma(x)^2),  p(z) = N(0, I),
      p(x | z) = prod_d Bernoulli(x_d; sigmoid(dec(z)_d)),

  enc: D -> hidden -> (H, 2) and dec: H -> reversed(hidden) -> D, tanh units
  (Burda et al. 2016 use 2 hidden layers; OVIS Fig. 4 one Gaussian layer).
  The encoder input is x - train_mean; the decoder's output bias starts at
  logit(clip(train_mean)), as in the SBN.

  Attributes:
    latent_dim: H.
    hidden: widths of the encoder's hidden layers; the decoder mirrors them.
    data_dim: D.
    train_mean: mean training pixel (D,) or None.
  """
  latent_dim: int = 50
  hidden: Sequence[int] = (200, 200)
  data_dim: int = 784
  train_mean: Optional[Any] = None

  def __post_init__(self):
    object.__setattr__(self, "train_mean",
                       sbn.train_mean_tuple(self.train_mean))
    object.__setattr__(self, "hidden", tuple(self.hidden))
    super().__post_init__()

  def setup(self):
    self.encoder_layers = [nn.Dense(h) for h in self.hidden] + [
        nn.Dense(2 * self.latent_dim)]
    self.decoder_layers = [nn.Dense(h) for h in reversed(self.hidden)] + [
        nn.Dense(self.data_dim,
                 bias_init=sbn.output_bias_init(self.train_mean,
                                                self.data_dim))]

  def stochastic_layers(self) -> tuple[protocol.StochasticLayer, ...]:
    return (protocol.StochasticLayer("gaussian", (self.latent_dim,)),)

  def layer_logits(self, layer: int, x: Array, above: Sequence[Array]) -> Array:
    """(..., H, 2): mean and log standard deviation of q(z | x)."""
    del layer, above
    chex.assert_axis_dimension(x, -1, self.data_dim)
    h = sbn.centre(x, self.train_mean, self.data_dim)
    for dense in self.encoder_layers[:-1]:
      h = jnp.tanh(dense(h))
    h = self.encoder_layers[-1](h)
    return h.reshape(h.shape[:-1] + (self.latent_dim, 2))

  def decoder_logits(self, z: Array) -> Array:
    """Logits of p(x | z), (..., H) -> (..., D)."""
    h = z
    for layer in self.decoder_layers[:-1]:
      h = jnp.tanh(layer(h))
    return self.decoder_layers[-1](h)

  def log_joint(self, x: Array, bs: Sequence[Array]) -> tuple[Array, Array]:
    """(log p(x, z), log q(z | x)), each of shape x.shape[:-1]."""
    (z,) = bs
    chex.assert_shape(z, x.shape[:-1] + (self.latent_dim,))
    log_p = (sbn.bernoulli_log_prob(x, self.decoder_logits(z))
             + normal_log_prob(z, 0.0, 1.0))
    log_q = jnp.sum(gaussian.log_prob(self.layer_logits(0, x, ()), z), -1)
    return log_p, log_q

  def __call__(self, x: Array, z: Array) -> tuple[Array, Array]:
    return self.log_joint(x, (z,))

