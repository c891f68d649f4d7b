"""The models a config can name: `config.model` -> factory -> Flax module.

`MODELS` maps the library's model names to factories `factory(config,
dataset)`; any other `config.model` is the import path of a user's factory,
"path/to/file.py:factory" or "package.module:factory" (`model_factory`, see
examples/custom_model.py). `make_model` calls the factory and checks that what
it returns follows `rebar_jax.models.protocol`; every failure is a
`rebar_jax.errors.ConfigError` naming config.model. (The Gaussian mixture of
`rebar_jax.models.gmm` is a toy for scripts/gmm.py, not a model a config can
train: it has no factory here.)
"""
import hashlib
import importlib
import importlib.util
import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from rebar_jax import data as data_lib
from rebar_jax import errors
from rebar_jax.models import categorical_vae as cat_lib
from rebar_jax.models import gaussian as gaussian_lib
from rebar_jax.models import protocol as models_protocol
from rebar_jax.models import sbn as sbn_lib

Factory = Callable[[ml_collections.ConfigDict, data_lib.Dataset], Any]


def _sbn(config: ml_collections.ConfigDict, dataset: data_lib.Dataset):
  return sbn_lib.SBN(
      num_layers=config.num_layers, num_latents=config.num_latents,
      nonlinear=config.nonlinear, hidden=config.hidden,
      data_dim=dataset.data_dim, train_mean=dataset.train_mean,
      activation=config.activation)


def _categorical_vae(config: ml_collections.ConfigDict,
                     dataset: data_lib.Dataset):
  return cat_lib.CategoricalVAE(
      num_vars=config.num_vars, num_classes=config.num_classes,
      hidden=tuple(config.mlp_hidden), data_dim=dataset.data_dim,
      learned_prior=config.learned_prior, train_mean=dataset.train_mean)


def _gaussian_vae(config: ml_collections.ConfigDict,
                  dataset: data_lib.Dataset):
  return gaussian_lib.GaussianVAE(
      latent_dim=config.num_latents, hidden=tuple(config.mlp_hidden),
      data_dim=dataset.data_dim, train_mean=dataset.train_mean)


# config.model -> factory(config, dataset) -> a module following
# rebar_jax.models.protocol. Any other value is an import path of a user's
# factory (`model_factory`).
MODELS = {"sbn": _sbn, "categorical_vae": _categorical_vae,
          "gaussian_vae": _gaussian_vae}

# The attributes `make_model` requires of a model before probing it.
PROTOCOL = ("stochastic_layers", "layer_logits", "log_joint", "data_dim",
            "train_mean")


def model_factory(name: str) -> Factory:
  """The factory named by config.model: a key of MODELS or an import path.

  An import path is "path/to/file.py:factory" (relative to the current
  directory) or "package.module:factory"; the factory is called as
  factory(config, dataset) and returns a Flax module following
  `rebar_jax.models.protocol` (see examples/custom_model.py).
  """
  if name in MODELS:
    return MODELS[name]
  if not isinstance(name, str) or name.count(":") != 1:
    raise errors.ConfigError(
        f"config.model must be one of {sorted(MODELS)} or the import path "
        "of your model's factory, 'path/to/file.py:factory' or "
        f"'package.module:factory'; got {name!r}.")
  where, attr = name.split(":")
  try:
    module = _import_file(name, where) if where.endswith(".py") else (
        importlib.import_module(where))
  except ImportError as e:
    raise errors.ConfigError(
        f"config.model={name!r}: cannot import {where!r} ({e}).") from e
  if not callable(getattr(module, attr, None)):
    raise errors.ConfigError(
        f"config.model={name!r}: {where} has no callable {attr!r}.")
  return getattr(module, attr)


def _import_file(name: str, where: str):
  """The module of the file `where` (imported once per absolute path)."""
  path = os.path.abspath(where)
  if not os.path.isfile(path):
    raise errors.ConfigError(f"config.model={name!r}: no file {path}.")
  module_name = "rebar_jax_user_model_" + hashlib.sha256(
      path.encode()).hexdigest()[:12]
  module = sys.modules.get(module_name)
  if module is None:
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None  # a .py file
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
  return module


def make_model(config: ml_collections.ConfigDict, dataset: data_lib.Dataset):
  """The model config.model names, built for `dataset` and checked against
  the model protocol (ConfigError naming config.model otherwise)."""
  factory = model_factory(config.model)
  try:
    model = factory(config, dataset)
  except TypeError as e:
    if config.model in MODELS:
      raise
    raise errors.ConfigError(
        f"config.model={config.model!r}: calling it as factory(config, "
        f"dataset) failed ({e}); it must take those two arguments and return "
        "a Flax module following rebar_jax/models/protocol.py.") from e
  _check_protocol(config, dataset, model)
  return model


def _check_protocol(config: ml_collections.ConfigDict,
                    dataset: data_lib.Dataset, model) -> None:
  """The model has the protocol's attributes, the data's width, and shapes
  and dtypes that work (its latent layers exist)."""
  missing = [a for a in PROTOCOL if not hasattr(model, a)]
  if missing:
    raise errors.ConfigError(
        f"config.model={config.model!r} made a {type(model).__name__}, "
        f"which lacks {missing} of the model protocol "
        "(rebar_jax/models/protocol.py).")
  if model.data_dim != dataset.data_dim:
    raise errors.ConfigError(
        f"config.model={config.model!r} made a model of data_dim="
        f"{model.data_dim}, but {config.dataset} has {dataset.data_dim} "
        "values per example; build the model with dataset.data_dim.")
  try:
    models_protocol.check(model)  # shapes and dtypes; latent layers exist
  except models_protocol.ModelError as e:
    raise errors.ConfigError(f"config.model={config.model!r}: {e}") from e


def init_params(model, key: jax.Array) -> Any:
  """The model's initial variables (`init` of log_joint on zeros)."""
  x = jnp.zeros((1, model.data_dim))
  bs = tuple(jnp.zeros((1,) + tuple(layer.event_shape))
             for layer in model.stochastic_layers())
  return model.init(key, x, bs, method="log_joint")
