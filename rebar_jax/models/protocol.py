r"""What the training code needs of a discrete-latent model.

A model with L stochastic layers b = (b_1, ..., b_L), recognition model

    q(b | x) = prod_l q(b_l | x, b_<l),
    q(b_l | .) = Family_l(logits_l(x, b_<l)),

and generative model p(x, b) is a Flax linen module with

    stochastic_layers() -> tuple[StochasticLayer, ...]  (no parameters needed)
    layer_logits(l, x, above) -> (..., *event_shape_l)  logits of q(b_l | .)
    log_joint(x, bs) -> (log p(x, b), log q(b | x))     each of shape (...)

the field `data_dim` (D) and, optionally, `train_mean` (the mean training
pixel (D,), which the baselines subtract from x; absent or None: zeros).
x is (..., D); bs and `above` are tuples of arrays (..., *event_shape_l), one
per layer, top (closest to x) first; `above` holds b_1..b_{l-1}. A layer's
family names the distribution (`"bernoulli"`: units in {0, 1};
`"categorical"`: one-hot over the last axis; `"gaussian"`: real units,
whose "logits" are (..., *event_shape, 2), the mean and log standard
deviation of each unit, `rebar_jax.estimators.gaussian`), and with it the
estimators that apply to that layer; layers of different families may be
mixed. `log_joint` must accept relaxed samples (points of [0, 1] or of the
simplex) for the relaxed estimators (REBAR, RELAX, Concrete), and be
continuous in them: those estimators differentiate it there, and a floor,
round, comparison or `where` on b biases them without an error (the trainer
refuses such a model for them, `gradients.relaxed_signal_jump` and
`rebar_jax.estimators.continuity` probe it). It must also create every
parameter when called under `init`. The parameters of q live in submodules
whose names contain "encoder" (`encoder`, `encoders_0`, ...): the gradient
diagnostics and the advisor read q's gradient there, and `check` refuses a
model without one.

Everything else (ancestral sampling, importance weights, the training chain)
is written once against these three methods: `sample` and `log_weight` below,
`rebar_jax.gradients` for training. `examples/custom_model.py` is such a
model, a categorical layer above a Bernoulli layer.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rebar_jax.estimators.families import FAMILIES

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


class ModelError(ValueError):
  """A model that does not follow the protocol; the message names the method."""


def _describe(out: Any) -> str:
  if isinstance(out, (tuple, list)):
    return (f"a {type(out).__name__} of {len(out)}: ("
            + ", ".join(_describe(o) for o in out) + ")")
  shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
  if shape is None:
    return f"a {type(out).__name__}"
  return f"an array of shape {tuple(shape)} and dtype {dtype}"


def check(model, params: Any = None, batch: int = 3) -> None:
  r"""Checks `model` against the protocol on abstract values (no compute).

  Calls stochastic_layers(), then layer_logits and log_joint under
  `jax.eval_shape` on a batch of `batch` data points and on one unbatched
  data point (the multi-sample objectives call the model per data point), and
  checks what they return:

    layer_logits(l, x, above): a float array (..., *event_shape_l), with a
      last axis of 2 more for a Gaussian layer (mean, log std);
    log_joint(x, bs): a tuple (log p, log q) of two float arrays (...), one
      value per data point (not summed over the batch).

  Args:
    model: the module; params: its variables, or None to create them with
      model.init(key, x, bs, method="log_joint") (abstractly).
    batch: the batch size checked (3: no axis of the model is likely 3 by
      accident).
  Raises:
    ModelError: naming the method, what it returned and what was expected.
  """
  name = type(model).__name__
  missing = [a for a in ("stochastic_layers", "layer_logits", "log_joint",
                         "data_dim") if not hasattr(model, a)]
  if missing:
    raise ModelError(f"{name} lacks {missing} of the model protocol "
                     "(rebar_jax/models/protocol.py).")
  layers = tuple(model.stochastic_layers())
  if not layers:
    raise ModelError(f"{name} has no latent layers (stochastic_layers() is "
                     "empty): the estimators train discrete or Gaussian "
                     "latent layers, so give it at least one.")
  for l, layer in enumerate(layers):
    shape = getattr(layer, "event_shape", None)
    if (not isinstance(layer, StochasticLayer) or not isinstance(shape, tuple)
        or not all(isinstance(n, int) and n > 0 for n in shape)):
      raise ModelError(
          f"{name}.stochastic_layers()[{l}] is {layer!r}; expected "
          "StochasticLayer(family, event_shape) with a tuple of positive "
          "ints, e.g. StochasticLayer('bernoulli', (200,)).")
    if layer.family == "categorical" and (not shape or shape[-1] < 2):
      raise ModelError(
          f"{name}.stochastic_layers()[{l}]: a categorical layer's event "
          f"shape ends with its classes (>= 2), got {shape}.")
  fams = families(model)
  dim = model.data_dim
  if params is None:
    try:
      params = jax.eval_shape(lambda k: model.init(
          k, jnp.zeros((1, dim)), tuple(
              jnp.zeros((1,) + layer.event_shape) for layer in layers),
          method="log_joint"), jax.random.key(0))
    except Exception as e:  # pylint: disable=broad-except
      raise ModelError(f"{name}.init(key, x, bs, method='log_joint') failed "
                       f"on x of shape (1, {dim}): {e}") from e
  for lead in ((batch,), ()):
    _check_calls(model, params, fams, layers, lead)
  paths = jax.tree_util.tree_flatten_with_path(params)[0]
  if not any("encoder" in str(getattr(p, "key", "")) for path, _ in paths
             for p in path):
    raise ModelError(
        f"{name} has no parameters under a submodule whose name contains "
        "'encoder': name the modules of q(b | x) so (e.g. self.encoder = "
        "nn.Dense(...)); the gradient diagnostics and the advisor read q's "
        "gradient there (rebar_jax/models/protocol.py).")


def _check_calls(model, params, fams, layers, lead) -> None:
  """`check` at one leading shape of x (a batch, or one data point)."""
  name = type(model).__name__
  x = jax.ShapeDtypeStruct(lead + (model.data_dim,), jnp.float32)
  bs = tuple(jax.ShapeDtypeStruct(lead + layer.event_shape, jnp.float32)
             for layer in layers)
  where = f"x of shape {x.shape}"
  for l, (fam, layer) in enumerate(zip(fams, layers)):
    expected = lead + layer.event_shape + (
        (2,) if fam.REPARAMETERISABLE else ())
    call = f"{name}.layer_logits({l}, x, above)"
    try:
      out = jax.eval_shape(lambda p, x, above, l=l: model.apply(
          p, l, x, tuple(above), method="layer_logits"), params, x, bs[:l])
    except Exception as e:  # pylint: disable=broad-except
      raise ModelError(f"{call} failed on {where}: {type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}") from e
    if (getattr(out, "shape", None) != expected
        or not jnp.issubdtype(out.dtype, jnp.floating)):
      raise ModelError(
          f"{call} returned {_describe(out)} on {where}; expected float "
          f"logits of shape {expected} (the leading shape of x, then the "
          f"{layer.family} layer's event shape {layer.event_shape}"
          + (", then 2: mean and log std" if fam.REPARAMETERISABLE else "")
          + ").")
  call = f"{name}.log_joint(x, bs)"
  try:
    out = jax.eval_shape(lambda p, x, bs: model.apply(
        p, x, tuple(bs), method="log_joint"), params, x, bs)
  except Exception as e:  # pylint: disable=broad-except
    raise ModelError(f"{call} failed on {where}: {type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''}") from e
  if (not isinstance(out, (tuple, list)) or len(out) != 2
      or any(getattr(o, "shape", None) != lead
             or not jnp.issubdtype(o.dtype, jnp.floating) for o in out)):
    raise ModelError(
        f"{call} returned {_describe(out)} on {where}; expected a tuple "
        f"(log p(x, b), log q(b | x)) of two float arrays of shape {lead}, "
        "one value per data point (not summed over the batch).")


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
  bs: list[Array] = []
  for l, (fam, layer) in enumerate(zip(fams, model.stochastic_layers())):
    logits = through(
        model.apply(params, l, x, tuple(bs), method="layer_logits"))
    shape = x.shape[:-1] + tuple(layer.event_shape)
    bs.append(fam.sample_from_noise(logits, fam.noise(keys[l], shape,
                                                      logits.dtype)))
  return tuple(bs)


def log_weight(model, params: Any, x: Array, key: Array) -> Array:
  """log w = log p(x, b) - log q(b | x), b ~ q(b | x); shape x.shape[:-1]."""
  log_p, log_q = model.apply(params, x, sample(model, params, x, key),
                             method="log_joint")
  return log_p - log_q
