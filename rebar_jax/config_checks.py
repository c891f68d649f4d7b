"""Checks of a training config's values, each failure a ConfigError.

`check_config` is what `rebar_jax.train.build` (and a sweep, before it starts)
runs on a config alone; the other checks need the data, the estimator or the
devices and run while the experiment is built. Every message names the field
(`config.<name>`) and what it accepts (`rebar_jax.errors.ConfigError`).
"""
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rebar_jax import data as data_lib
from rebar_jax import errors
from rebar_jax import gradients
from rebar_jax import model_registry
from rebar_jax.estimators import continuity
from rebar_jax.estimators import options as options_lib
from rebar_jax.models import sbn as sbn_lib

# Config fields and the values they accept (the estimator's options by their
# schema, `estimators.options.OPTIONS`; the model's by the model).
INTS = {  # name: minimum
    "seed": 0, "eval_seed": 0, "eval_max_examples": 0, "diagnostic_draws": 0,
    "batch_size": 1, "num_steps": 1, "steps_per_call": 1, "eval_every": 1,
    "checkpoint_every": 1, "eval_num_samples": 1, "eval_batch_size": 1,
    "num_devices": 0,
}
POSITIVE_FLOATS = ("learning_rate", "estimator_learning_rate")
MODEL_INTS = {"sbn": {"num_layers": 1, "num_latents": 1, "hidden": 1},
              "categorical_vae": {"num_vars": 1, "num_classes": 2},
              "gaussian_vae": {"num_latents": 1}}
MODEL_SIZES = {"sbn": (), "categorical_vae": ("mlp_hidden",),
               "gaussian_vae": ("mlp_hidden",)}
MAX_SEED = 2**32 - 1


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _fail(config: ml_collections.ConfigDict, name: str, expected: str):
  raise errors.ConfigError(
      f"config.{name} must be {expected}, got {config[name]!r}.")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError, naming the field, for any value that cannot work."""
  model_registry.model_factory(config.model)  # ConfigError naming the fix
  for name, choices in (("dataset", data_lib.DATASETS),
                        ("data_source", data_lib.SOURCES)):
    if config[name] not in choices:
      _fail(config, name, f"one of {list(choices)}")
  check_estimator_name(config.estimator)
  _check_numbers(config)
  _check_model_fields(config)
  _check_auto(config)
  for name in ("eval_every", "checkpoint_every"):
    if config[name] % config.steps_per_call:
      raise errors.ConfigError(
          f"config.{name}={config[name]} must be a multiple of "
          f"config.steps_per_call={config.steps_per_call}.")


def _check_auto(config: ml_collections.ConfigDict) -> None:
  """advise_every and advise_candidates: estimator=auto's alone."""
  if not _is_int(config.advise_every) or config.advise_every < 0:
    _fail(config, "advise_every", "an integer >= 0")
  if config.estimator != "auto":
    for name in ("advise_every", "advise_candidates"):
      if config[name]:
        raise errors.ConfigError(
            f"config.{name}={config[name]!r} is for config.estimator='auto' "
            f"alone; config.estimator={config.estimator!r} would ignore it.")
    return
  if config.advise_every % config.steps_per_call:
    raise errors.ConfigError(
        f"config.advise_every={config.advise_every} must be a multiple of "
        f"config.steps_per_call={config.steps_per_call}.")
  if config.iw_samples != 1:
    raise errors.ConfigError(
        "config.estimator='auto' chooses among the one-sample estimators: "
        f"set iw_samples=1 (got {config.iw_samples}).")


def _check_numbers(config: ml_collections.ConfigDict) -> None:
  """The integer and float fields (the model's integers included)."""
  ints = dict(INTS, **MODEL_INTS.get(config.model, {}))
  for name, minimum in ints.items():
    if not _is_int(config[name]) or config[name] < minimum:
      _fail(config, name, f"an integer >= {minimum}")
  for name in ("seed", "eval_seed"):
    if config[name] > MAX_SEED:
      _fail(config, name, f"an integer in [0, {MAX_SEED}]")
  for name in POSITIVE_FLOATS:
    if not (math.isfinite(float(config[name])) and float(config[name]) > 0):
      _fail(config, name, "a finite number > 0")
  for name, value in estimator_options(config).items():
    expected = options_lib.OPTIONS[name].check(value)
    if expected is not None:
      _fail(config, options_lib.OPTIONS[name].field, expected)
  if not float(config.divergence_threshold) > 0:
    _fail(config, "divergence_threshold",
          "> 0 (nats; inf turns the guard off)")


def _check_model_fields(config: ml_collections.ConfigDict) -> None:
  """The layer sizes (RELAX's networks, the model's MLP) and activation."""
  for name in MODEL_SIZES.get(config.model, ()):
    if not all(_is_int(h) and h >= 1 for h in config[name]):
      _fail(config, name, "a tuple of integers >= 1")
  if config.model == "sbn" and config.activation not in sbn_lib.ACTIVATIONS:
    _fail(config, "activation", f"one of {sorted(sbn_lib.ACTIVATIONS)}")


def check_estimator_name(name: Any) -> None:
  """config.estimator is a non-empty name (its parts are checked by
  `gradients.EstimatorSpec`: each family named once)."""
  if not isinstance(name, str) or not name.strip():
    raise errors.ConfigError(
        f"config.estimator must be an estimator's name, got {name!r}.")


def check_data_dir(config: ml_collections.ConfigDict) -> None:
  """config.data_dir, if it exists, is a directory."""
  if config.data_dir and os.path.exists(config.data_dir) and not (
      os.path.isdir(config.data_dir)):
    raise errors.ConfigError(
        f"config.data_dir={config.data_dir!r} is a file; give the directory "
        "that holds the data files.")


def check_batch_size(config: ml_collections.ConfigDict,
                     dataset: data_lib.Dataset) -> None:
  """config.batch_size fits in the training split."""
  num_train = dataset.train.shape[0]
  if config.batch_size > num_train:
    raise errors.ConfigError(
        f"config.batch_size={config.batch_size} exceeds the {num_train} "
        f"training examples of {config.dataset} ({config.data_source}); "
        f"choose at most {num_train}.")


def estimator_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{option: value} of the estimator options the config holds (a list set
  from the command line read as a tuple)."""
  return {name: tuple(config[o.field]) if isinstance(config[o.field], list)
          else config[o.field]
          for name, o in options_lib.OPTIONS.items() if o.field in config}


def estimator_spec(config: ml_collections.ConfigDict,
                   model) -> gradients.EstimatorSpec:
  """config's estimator for `model` (ConfigError naming config.estimator)."""
  try:
    return gradients.EstimatorSpec(
        config.estimator, gradients.layer_families(model),
        **estimator_options(config))
  except ValueError as e:
    raise errors.ConfigError(
        f"config.estimator={config.estimator!r}: {e}") from e


def check_relaxed_signal(config: ml_collections.ConfigDict,
                         dataset: data_lib.Dataset, model,
                         spec: gradients.EstimatorSpec) -> None:
  """Refuses a user's model whose relaxed learning signal jumps (REBAR, RELAX,
  Concrete differentiate it on relaxed samples: `continuity`), probed at
  its initial parameters on the first training examples."""
  x = jnp.asarray(dataset.train[:4], jnp.float32)
  key_model, key_probe = jax.random.split(jax.random.key(config.seed))
  jump = gradients.relaxed_signal_jump(
      model, spec, model_registry.init_params(model, key_model), x, key_probe)
  if jump is None:
    return
  try:
    continuity.report(jump, 1e-4, "log p(x, b) - log q(b | x)")
  except ValueError as e:
    raise errors.ConfigError(
        f"config.model={config.model!r} with "
        f"config.estimator={config.estimator!r}: {e}") from e
