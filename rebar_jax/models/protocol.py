r"""What the training code needs of a discrete-latent model.

A model with L stochastic layers b = (b_1, ..., b_L), recognition model

    q(b | x) = prod_l q(b_l | x, b_<l),   q(b_l | .) = Family_l(logits_l(x, b_<l)),

and generative model p(x, b) is a Flax linen module with

    stochastic_layers() -> tuple[StochasticLayer, ...]   (no parameters needed)
    layer_logits(l, x, above) -> (..., *event_shape_l)   logits of q(b_l | x, b_<l)
    log_joint(x, bs) -> (log p(x, b), log q(b | x))      each of shape (...)

and the fields `data_dim` (D) and `train_mean` (the mean training pixel (D,)
or None). x is (..., D); bs and `above` are tuples of arrays
(..., *event_shape_l), one per layer, top (closest to x) first; `above` holds
b_1..b_{l-1}. A layer's family names the distribution (`"bernoulli"`: units in
{0, 1}; `"categorical"`: one-hot over the last axis; `"gaussian"`: real units,
whose "logits" are (..., *event_shape, 2), the mean and log standard
deviation of each unit, `rebar_jax.estimators.gaussian`), and with it the
estimators that apply to that layer; layers of different families may be
mixed. `log_joint` must accept relaxed samples (points of [0, 1] or of the
simplex) for the relaxed estimators, and create every parameter when called
under `init`. The gradient diagnostics read the parameters of q from the
submodules whose names contain "encoder".

Everything else (ancestral sampling, importance weights, the training chain)
is written once against these three methods: `sample` and `log_weight` below,
`rebar_jax.gradients` for training. `examples/custom_model.py` is such a
model, a categorical layer above a Bernoulli layer.
"""
from typing import Any, NamedTuple

import jax

from rebar_jax.estimators.protocol import FAMILIES

Array = jax.Array


class StochasticLayer(NamedTuple):
  """One stochastic layer: its distribution family and the shape of b_l."""
  family: str
  event_shape: tuple[int, ...]


def families(model) -> tuple[Any, ...]:
  """The family module of each stochastic layer of `model`, top first."""
  out = []
  for layer in model.stochastic_layers():
    if layer.family not in FAMILIES:
      raise ValueError(
          f"{type(model).__name__} has a layer of family {layer.family!r}; "
          f"the families are {sorted(FAMILIES)}.")
    out.append(FAMILIES[layer.family])
  return tuple(out)


def sample(model, params: Any, x: Array, key: Array) -> tuple[Array, ...]:
  r"""Ancestral hard sample b ~ q(b | x), no gradient through b.

      b_l = sample_from_noise(logits_l(x, b_<l), noise_l),
      noise_l = family_l.noise(k_l, x.shape[:-1] + event_shape_l),
      (k_1..k_L) = split(key, L),

  one noise array per layer for the whole leading shape of x (e.g. a batch).

  Args:
    model: a module following this protocol; params: its variables.
    x: (..., D).
    key: one PRNG key.
  Returns:
    bs: tuple of L arrays (..., *event_shape_l).
  """
  return _ancestral(model, params, x, key, jax.lax.stop_gradient)


def reparameterised_sample(model, params: Any, x: Array, key: Array
                           ) -> tuple[Array, ...]:
  """The sample of `sample` (same key, same draw), differentiable in params.

  b_l = mu_l + sigma_l * eps_l for Gaussian layers, so gradients flow through
  the whole chain (the pathwise IWAE gradient, DReG). Every layer's family
  must be reparameterisable; a discrete layer raises ValueError.
  """
  for layer, fam in zip(model.stochastic_layers(), families(model)):
    if not fam.REPARAMETERISABLE:
      raise ValueError(
          f"{type(model).__name__} has a {layer.family} layer, which has no "
          "reparameterisation; pathwise gradients need every layer Gaussian. "
          "Use a score-function or multi-sample estimator instead.")
  return _ancestral(model, params, x, key, lambda logits: logits)


def _ancestral(model, params, x, key, through):
  fams = families(model)
  keys = jax.random.split(key, len(fams))
  bs = []
  for l, (fam, layer) in enumerate(zip(fams, model.stochastic_layers())):
    logits = through(
        model.apply(params, l, x, tuple(bs), method="layer_logits"))
    shape = x.shape[:-1] + tuple(layer.event_shape)
    bs.append(fam.sample_from_noise(logits, fam.noise(keys[l], shape,
                                                      logits.dtype)))
  return tuple(bs)


def log_weight(model, params: Any, x: Array, key: Array) -> Array:
  """log w = log p(x, b) - log q(b | x) at one b ~ q(b | x); shape x.shape[:-1]."""
  log_p, log_q = model.apply(params, x, sample(model, params, x, key),
                             method="log_joint")
  return log_p - log_q
