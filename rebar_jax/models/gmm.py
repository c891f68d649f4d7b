r"""The Gaussian mixture model of Le et al. (2019) and OVIS (Fig. 2).

    p_theta(c) = Cat(c; softmax(theta)),   p(x | c) = N(x; mu_c, sigma^2),
    mu_c = 10 c,  sigma = 5,  c in {0, ..., C - 1},  x in R,
    q_phi(c | x) = Cat(c; softmax(eta_phi(x))),  eta_phi: 1-16-C (tanh),

with C = 20. Only theta (the mixture weights, initialised uniform) and phi
are learned; the data come from the true model, theta* = log(5 + c), so the
learned prior and the amortised posterior can be compared with the truth
(`prior_error`, `posterior_error`: the L2 distances OVIS reports as "MSE").
Follows `rebar_jax.models.protocol` with one categorical layer of event shape
(C,) (one variable, one-hot).

Reference: Le, Kosiorek, Siddharth, Teh & Wood (2019), "Revisiting reweighted
wake-sleep for models with stochastic control flow", Sec. 4.2.
"""
import math
from typing import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from rebar_jax.models import protocol

Array = jax.Array


class GaussianMixture(nn.Module):
  """A C-component 1-D Gaussian mixture with an amortised posterior.

  Attributes:
    num_clusters: C.
    hidden: width of the encoder's hidden layer.
    spacing: the distance between consecutive means (mu_c = spacing * c).
    scale: sigma, shared by the components.
  Parameters: "prior_logits" theta (C,), "encoder" (a 1-hidden-C MLP).
  """
  num_clusters: int = 20
  hidden: int = 16
  spacing: float = 10.0
  scale: float = 5.0

  @property
  def data_dim(self) -> int:
    return 1

  @property
  def train_mean(self) -> None:
    return None

  @property
  def means(self) -> Array:
    return self.spacing * jnp.arange(self.num_clusters, dtype=jnp.float32)

  def true_prior_logits(self) -> Array:
    """theta* = log(5 + c), the mixture weights the data come from."""
    return jnp.log(5.0 + jnp.arange(self.num_clusters, dtype=jnp.float32))

  def setup(self):
    self.prior_logits = self.param("prior_logits", nn.initializers.zeros,
                                   (self.num_clusters,))
    self.encoder = nn.Sequential([nn.Dense(self.hidden), jnp.tanh,
                                  nn.Dense(self.num_clusters)])

  def stochastic_layers(self) -> tuple[protocol.StochasticLayer, ...]:
    return (protocol.StochasticLayer("categorical", (self.num_clusters,)),)

  def layer_logits(self, layer: int, x: Array, above: Sequence[Array]) -> Array:
    """Logits of q(c | x), (..., 1) -> (..., C)."""
    del layer, above
    chex.assert_axis_dimension(x, -1, 1)
    return self.encoder(x)

  def log_likelihoods(self, x: Array) -> Array:
    """log N(x; mu_c, sigma^2) for every c, (..., 1) -> (..., C)."""
    return (-0.5 * ((x - self.means) / self.scale)**2 - math.log(self.scale)
            - 0.5 * math.log(2 * math.pi))

  def log_joint(self, x: Array, bs: Sequence[Array]) -> tuple[Array, Array]:
    """(log p(x, c), log q(c | x)) for one-hot (or relaxed) c, shape (...)."""
    (c,) = bs
    log_p = jnp.sum(c * (jax.nn.log_softmax(self.prior_logits)
                         + self.log_likelihoods(x)), -1)
    log_q = jnp.sum(c * jax.nn.log_softmax(self.layer_logits(0, x, ())), -1)
    return log_p, log_q

  def __call__(self, x: Array, c: Array) -> tuple[Array, Array]:
    return self.log_joint(x, (c,))

  def sample_data(self, key: Array, num: int) -> Array:
    """x ~ p_theta*(x), shape (num, 1)."""
    k_c, k_x = jax.random.split(key)
    c = jax.random.categorical(k_c, self.true_prior_logits(), shape=(num,))
    noise = jax.random.normal(k_x, (num,))
    return (self.means[c] + self.scale * noise)[:, None]

  def true_posterior(self, x: Array) -> Array:
    """p_theta*(c | x), (..., 1) -> (..., C)."""
    return jax.nn.softmax(jax.nn.log_softmax(self.true_prior_logits())
                          + self.log_likelihoods(x))

  def errors(self, x: Array) -> dict[str, Array]:
    """||softmax(theta) - pi*||_2 and mean over x of ||q(.|x) - p*(.|x)||_2."""
    prior = jax.nn.softmax(self.prior_logits)
    q = jax.nn.softmax(self.layer_logits(0, x, ()))
    return {"prior_error": jnp.linalg.norm(
                prior - jax.nn.softmax(self.true_prior_logits())),
            "posterior_error": jnp.mean(jnp.linalg.norm(
                q - self.true_posterior(x), axis=-1))}
