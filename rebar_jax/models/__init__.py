"""Flax linen generative models with recognition networks.

Every model follows `protocol`: `stochastic_layers()`, `layer_logits(l, x,
above)` and `log_joint(x, bs)`, from which sampling, the bounds of
`rebar_jax.objectives` and training (`rebar_jax.gradients`) are written once.
A user's model needs nothing else (see `examples/custom_model.py`).
"""
from typing import Any

import jax
import numpy as np

from rebar_jax.models import categorical_vae
from rebar_jax.models import gaussian
from rebar_jax.models import gmm
from rebar_jax.models import protocol
from rebar_jax.models import sbn
from rebar_jax.models.categorical_vae import CategoricalVAE
from rebar_jax.models.gaussian import GaussianVAE
from rebar_jax.models.gaussian import LinearGaussian
from rebar_jax.models.gmm import GaussianMixture
from rebar_jax.models.sbn import SBN

__all__ = ["CategoricalVAE", "GaussianMixture", "GaussianVAE",
           "LinearGaussian", "SBN", "categorical_vae", "gaussian", "gmm",
           "num_params", "protocol", "sample_q", "sbn"]


def num_params(params: Any) -> int:
  """Total number of scalars in a pytree of parameters."""
  return int(sum(np.size(p) for p in jax.tree_util.tree_leaves(params)))


def sample_q(model: Any, params: Any, x: jax.Array, key: jax.Array):
  """bs ~ q(b | x) (a tuple, one array per layer) and log q(b | x) (...)."""
  bs = protocol.sample(model, params, x, key)
  return bs, model.apply(params, x, bs, method="log_joint")[1]
