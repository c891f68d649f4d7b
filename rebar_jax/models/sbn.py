r"""Sigmoid belief networks (SBN): the generative models of REBAR/RELAX/DisARM.

An SBN with L stochastic layers of binary units b_1..b_L in {0, 1}^H over data
x = b_0 in {0, 1}^D (Neal 1992) is trained with a factorised recognition model:

    p(x, b) = p(b_L) prod_{l=1}^{L} p(b_{l-1} | b_l),
    q(b | x) = prod_{l=1}^{L} q(b_l | b_{l-1}),

where every conditional is a product of Bernoullis with logits given by a
deterministic network of its parent: one Dense layer (linear SBN) or
Dense(hidden)-act-Dense(hidden)-act-Dense(out) (nonlinear SBN; act is tanh in
REBAR/RELAX, LeakyReLU with slope 0.3 in DisARM), and p(b_L) has learned
logits. This is the setup of Tucker et al. 2017 (REBAR, Sec. 5.2),
Grathwohl et al. 2018 (RELAX, Sec. 6.2) and Dong et al. 2020 (DisARM, Sec. 5);
the papers use 784-200 / 784-200-200 linear and 784-(200-200-)200 nonlinear.

Conventions (as the original REBAR code):
  * the encoder input of layer 1 is x - train_mean; of later layers 2b - 1;
  * the decoder input is 2b - 1;
  * the output bias of p(x | b_1) starts at
    logit(clip(train_mean, 1e-3, 1 - 1e-3)).

Shapes: the model works on any leading shape. x is (..., D) and each b_l is
(..., H); every log-probability sums over the last (unit) axis only and has the
leading shape (...). Every log-probability also accepts relaxed b in [0, 1]
through the Bernoulli formula b log sigmoid(l) + (1 - b) log sigmoid(-l),
which is what REBAR/RELAX evaluate on the relaxed samples.

Layers are 0-indexed in code: `bs[l]` is b_{l+1}, for l = 0..L-1.
"""
from typing import Any, Callable, cast, Optional, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rebar_jax.models import protocol

Array = jax.Array
PRNGKey = jax.Array
Params = Any


def bernoulli_log_prob(b: Array, logits: Array) -> Array:
  r"""sum_i (last axis) b_i log sigmoid(l_i) + (1 - b_i) log sigmoid(-l_i).

  Exact log-probability of b in {0, 1}^n under Bernoulli(sigmoid(l)), and its
  linear interpolation for relaxed b in [0, 1]. Computed as
  sum_i b_i l_i - softplus(l_i) (the same function: one transcendental per
  element instead of two, the costliest elementwise work of a train step; its
  gradient in l is b - sigmoid(l)). Stable for any finite logits.

  Args:
    b: (..., n), hard or relaxed samples.
    logits: (..., n), broadcastable against b.
  Returns:
    (...), the leading shape.
  """
  return jnp.sum(b * logits - jax.nn.softplus(logits), axis=-1)


def train_mean_tuple(train_mean: Any) -> Optional[tuple[float, ...]]:
  """train_mean as a tuple of floats, so the Module stays hashable (static)."""
  if train_mean is None or isinstance(train_mean, tuple):
    return train_mean
  return tuple(float(v) for v in np.asarray(train_mean, np.float64).ravel())


def centre(x: Array, train_mean: Optional[tuple[float, ...]],
           data_dim: int) -> Array:
  """x - train_mean (x itself when train_mean is None)."""
  if train_mean is None:
    return x
  mean = np.asarray(train_mean, np.float32)
  if mean.shape != (data_dim,):
    raise ValueError(
        f"train_mean must have shape ({data_dim},), got {mean.shape}.")
  return x - mean


def output_bias_init(train_mean: Optional[tuple[float, ...]],
                     data_dim: int) -> Callable[..., Array]:
  """Bias initialiser of p(x | .): logit(clip(train_mean, 1e-3, 1 - 1e-3)).

  The decoder then starts at the marginal pixel frequencies (zeros if None).
  """
  if train_mean is None:
    return nn.initializers.zeros
  mean = np.clip(np.asarray(train_mean, np.float64), 1e-3, 1.0 - 1e-3)
  if mean.shape != (data_dim,):
    raise ValueError(
        f"train_mean must have shape ({data_dim},), got {mean.shape}.")
  bias = np.log(mean) - np.log1p(-mean)

  def init(key: PRNGKey, shape: Sequence[int], dtype=jnp.float32) -> Array:
    del key
    chex.assert_shape(bias, tuple(shape))
    return jnp.asarray(bias, dtype)

  return init


# The nonlinear conditionals' hidden units: tanh (REBAR, RELAX), LeakyReLU
# with negative slope 0.3 (DisARM, Dong et al. 2020, Sec. 5).
ACTIVATIONS = {
    "tanh": jnp.tanh,
    "leaky_relu": lambda h: nn.leaky_relu(h, negative_slope=0.3),
}


class Conditional(nn.Module):
  """Logits of a factorised Bernoulli conditional: one Dense layer (linear) or
  Dense(hidden)-act-Dense(hidden)-act-Dense(features) (nonlinear), act one of
  `ACTIVATIONS`."""
  features: int
  hidden: int = 200
  nonlinear: bool = False
  bias_init: Callable[..., Array] = nn.initializers.zeros
  activation: str = "tanh"

  @nn.compact
  def __call__(self, h: Array) -> Array:
    if self.nonlinear:
      act = ACTIVATIONS[self.activation]
      h = act(nn.Dense(self.hidden)(h))
      h = act(nn.Dense(self.hidden)(h))
    return nn.Dense(self.features, bias_init=self.bias_init)(h)


class SBN(nn.Module):
  r"""A sigmoid belief network p(x, b) with its recognition model q(b | x).

  Attributes:
    num_layers: L, the number of stochastic layers (the papers use 1, 2 or 3).
    num_latents: H, units per stochastic layer.
    nonlinear: two hidden layers in every conditional (papers: L = 1 only).
    hidden: width of those hidden layers.
    activation: their units, a name of `ACTIVATIONS` ("tanh": REBAR/RELAX,
      "leaky_relu": LeakyReLU(0.3), DisARM).
    data_dim: D.
    train_mean: mean training pixel, shape (D,) (numpy, tuple or None). Stored
      as a tuple of floats so the module is hashable and can be a static jit
      argument. Centres the encoder input, initialises the output bias.

  Parameters (`params['params']`): `encoders_l` (q(b_{l+1} | b_l)),
  `decoders_l` (p(b_l | b_{l+1}), decoders_0 gives p(x | b_1)) for l = 0..L-1,
  and `prior_logits` (H,) for p(b_L), initialised to 0.
  """
  num_layers: int
  num_latents: int = 200
  nonlinear: bool = False
  hidden: int = 200
  data_dim: int = 784
  train_mean: Optional[Any] = None
  activation: str = "tanh"

  def __post_init__(self):
    object.__setattr__(self, "train_mean", train_mean_tuple(self.train_mean))
    if self.num_layers < 1:
      raise ValueError(f"num_layers must be >= 1, got {self.num_layers}.")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, "
                       f"got {self.activation!r}.")
    super().__post_init__()

  def setup(self):
    self.encoders = [
        Conditional(self.num_latents, self.hidden, self.nonlinear,
                    activation=self.activation)
        for _ in range(self.num_layers)
    ]
    self.decoders = [
        Conditional(
            self.data_dim if l == 0 else self.num_latents, self.hidden,
            self.nonlinear,
            bias_init=(output_bias_init(self.train_mean, self.data_dim)
                       if l == 0 else nn.initializers.zeros),
            activation=self.activation)
        for l in range(self.num_layers)
    ]
    self.prior_logits = self.param(
        "prior_logits", nn.initializers.zeros, (self.num_latents,))

  def _check_bs(self, x: Array, bs: Sequence[Array]) -> None:
    chex.assert_axis_dimension(x, -1, self.data_dim)
    if len(bs) != self.num_layers:
      raise ValueError(
          f"Expected {self.num_layers} latent layers, got {len(bs)}.")
    chex.assert_shape(bs, x.shape[:-1] + (self.num_latents,))

  def encoder_logits(self, layer: int, h: Array) -> Array:
    """Logits of q(b_{layer+1} | h): h = x (raw, centred here) for layer 0,
    else the previous sample b_layer (mapped to 2b - 1 here).

    Args:
      layer: 0..L-1 (static Python int).
      h: (..., D) for layer 0, else (..., H).
    Returns:
      (..., H).
    """
    if not 0 <= layer < self.num_layers:
      raise ValueError(f"layer must be in [0, {self.num_layers}), got {layer}.")
    if layer == 0:
      chex.assert_axis_dimension(h, -1, self.data_dim)
      h = centre(h, self.train_mean, self.data_dim)
    else:
      chex.assert_axis_dimension(h, -1, self.num_latents)
      h = 2.0 * h - 1.0
    return self.encoders[layer](h)

  def decoder_logits(self, layer: int, b: Array) -> Array:
    """Logits of p(b_layer | b_{layer+1}) (of p(x | b_1) for layer 0).

    Args:
      layer: 0..L-1 (static Python int).
      b: (..., H), the sample bs[layer] = b_{layer+1}.
    Returns:
      (..., D) for layer 0, else (..., H).
    """
    chex.assert_axis_dimension(b, -1, self.num_latents)
    return self.decoders[layer](2.0 * b - 1.0)

  def log_q(self, x: Array, bs: Sequence[Array]) -> Array:
    r"""log q(b | x) = sum_l log q(b_l | b_{l-1}), b_0 = x.

    Shape x.shape[:-1].
    """
    self._check_bs(x, bs)
    parents = (x,) + tuple(bs[:-1])
    return cast(Array, sum(bernoulli_log_prob(b, self.encoder_logits(l, h))
                           for l, (h, b) in enumerate(zip(parents, bs))))

  def log_prior(self, bs: Sequence[Array]) -> Array:
    r"""log p(b) = log p(b_L) + sum_{l=2}^{L} log p(b_{l-1} | b_l).

    Shape (...).
    """
    lp = bernoulli_log_prob(bs[-1], self.prior_logits)
    for l in range(1, self.num_layers):
      lp = lp + bernoulli_log_prob(bs[l - 1], self.decoder_logits(l, bs[l]))
    return lp

  def log_likelihood(self, x: Array, bs: Sequence[Array]) -> Array:
    """log p(x | b_1). Shape x.shape[:-1]."""
    return bernoulli_log_prob(x, self.decoder_logits(0, bs[0]))

  def log_p(self, x: Array, bs: Sequence[Array]) -> Array:
    r"""log p(x, b_1..b_L) = log p(x | b_1) + log p(b). Shape x.shape[:-1]."""
    self._check_bs(x, bs)
    return self.log_likelihood(x, bs) + self.log_prior(bs)

  def __call__(self, x: Array, bs: Sequence[Array]) -> tuple[Array, Array]:
    """(log p(x, b), log q(b | x)); creates every parameter under `init`."""
    return self.log_p(x, bs), self.log_q(x, bs)

  # The model protocol (`rebar_jax.models.protocol`).

  def stochastic_layers(self) -> tuple[protocol.StochasticLayer, ...]:
    """L Bernoulli layers of H units."""
    return (protocol.StochasticLayer("bernoulli", (self.num_latents,)),
            ) * self.num_layers

  def layer_logits(self, layer: int, x: Array,
                   above: Sequence[Array]) -> Array:
    """Logits of q(b_layer | b_{layer-1}) (of q(b_1 | x) for layer 0)."""
    return self.encoder_logits(layer, above[-1] if layer else x)

  def log_joint(self, x: Array, bs: Sequence[Array]) -> tuple[Array, Array]:
    """(log p(x, b), log q(b | x)) for the tuple of layers bs."""
    return self(x, bs)


def sample_q(model: SBN, params: Params, x: Array,
             key: PRNGKey) -> tuple[tuple[Array, ...], Array]:
  r"""b ~ q(b | x) by ancestral sampling, and log q(b | x).

  b_l = 1[logits_l + logistic noise >= 0] (equivalently u < sigmoid(logits_l)),
  one key per layer from `jax.random.split(key, L)`; no gradient flows through
  the thresholds.

  Args:
    model: the SBN.
    params: its variables.
    x: (..., D).
    key: one PRNG key (shared by the whole leading shape; noise is drawn per
      element).
  Returns:
    bs: tuple of L arrays (..., H) in {0, 1}; log_q: (...).
  """
  bs = protocol.sample(model, params, x, key)
  # flax types apply's result as (output, mutated variables) too; no mutable.
  log_q = model.apply(params, x, bs, method=SBN.log_q)
  return bs, log_q  # type: ignore[return-value]
