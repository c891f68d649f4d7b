"""Flax linen generative models with recognition networks.

Every model is a linen Module with methods

    log_p(x, b) -> (...)          log p(x, b)
    log_q(x, b) -> (...)          log q(b | x)
    sample(x, key) -> (b, log_q)  b ~ q(b | x), hard, with log q(b | x)

(x of shape (..., data_dim); b a pytree of latents), plus `encoder_logits`.
The module-level `sample_q(model, params, x, key)` of each model file wraps
`sample`; `rebar_jax.objectives` needs only this protocol. Training
(`rebar_jax.gradients`) needs the layer-by-layer view of `models.protocol`:
`stochastic_layers()`, `layer_logits(l, x, above)` and `log_joint(x, bs)`.
"""
from typing import Any

import jax
import numpy as np

from rebar_jax.models import categorical_vae
from rebar_jax.models import sbn
from rebar_jax.models.categorical_vae import CategoricalVAE
from rebar_jax.models.sbn import SBN

__all__ = ["CategoricalVAE", "SBN", "categorical_vae", "num_params",
           "sample_q", "sbn"]


def num_params(params: Any) -> int:
  """Total number of scalars in a pytree of parameters."""
  return int(sum(np.size(p) for p in jax.tree_util.tree_leaves(params)))


def sample_q(model: Any, params: Any, x: jax.Array, key: jax.Array):
  """b ~ q(b | x) and log q(b | x) for any model following the protocol."""
  return model.apply(params, x, key, method="sample")
