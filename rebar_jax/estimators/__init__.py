"""Gradient estimators through discrete random variables.

Contract: `grad = est(key, logits, f, **options)` returns one draw of an
estimate of d/dlogits E_b[f(b)], shaped like `logits`, in the logits' dtype
(float16 and bfloat16 logits are computed in float32, f called on float32
samples: `_checks.float32_inside`). Every estimator is one entry of
`registry` (its families, cost, options, capabilities, paper); `BERNOULLI`,
`CATEGORICAL` and `GAUSSIAN` map each family's names to its one-layer
estimators, and `UNBIASED`, `UNBIASED_CATEGORICAL` and `UNBIASED_GAUSSIAN`
hold the names of the unbiased ones, all read from the registry. The
categorical family's estimators live in `categorical` and, each built on its
own coupling or sampling scheme, `stick_breaking`, `carms` and
`unordered_set`; the noise of both discrete families in `noise`.
"""
from typing import Callable

from rebar_jax.estimators import bernoulli
from rebar_jax.estimators import carms
from rebar_jax.estimators import categorical
from rebar_jax.estimators import control_variates
from rebar_jax.estimators import exact
from rebar_jax.estimators import gaussian
from rebar_jax.estimators import multisample
from rebar_jax.estimators import noise
from rebar_jax.estimators import options
from rebar_jax.estimators import registry
from rebar_jax.estimators import stick_breaking
from rebar_jax.estimators import unordered_set
from rebar_jax.estimators.bernoulli import arm
from rebar_jax.estimators.bernoulli import arms
from rebar_jax.estimators.bernoulli import concrete
from rebar_jax.estimators.bernoulli import disarm
from rebar_jax.estimators.bernoulli import double_cv
from rebar_jax.estimators.bernoulli import indecater
from rebar_jax.estimators.bernoulli import muprop
from rebar_jax.estimators.bernoulli import rebar
from rebar_jax.estimators.bernoulli import rebar_terms
from rebar_jax.estimators.bernoulli import reinforce
from rebar_jax.estimators.bernoulli import reinforce_loo
from rebar_jax.estimators.bernoulli import reinmax
from rebar_jax.estimators.bernoulli import relax
from rebar_jax.estimators.bernoulli import rodeo
from rebar_jax.estimators.bernoulli import straight_through
from rebar_jax.estimators.bernoulli import straight_through_gumbel
from rebar_jax.estimators.control_variates import variance_gradient

__all__ = [
    "BERNOULLI", "CATEGORICAL", "GAUSSIAN", "UNBIASED", "UNBIASED_CATEGORICAL",
    "UNBIASED_GAUSSIAN", "arm", "arms", "bernoulli", "carms", "categorical",
    "concrete", "control_variates", "disarm", "double_cv", "exact", "gaussian",
    "get", "indecater", "multisample", "muprop", "noise", "options", "rebar",
    "rebar_terms", "registry", "reinforce", "reinforce_loo", "reinmax",
    "relax", "rodeo",
    "stick_breaking", "straight_through", "straight_through_gumbel",
    "unordered_set", "variance_gradient"]

# The one-layer estimators of each family, and the names of the unbiased
# ones, as the registry (`registry`) holds them.
BERNOULLI: dict[str, Callable] = registry.one_layer("bernoulli")
CATEGORICAL: dict[str, Callable] = registry.one_layer("categorical")
GAUSSIAN: dict[str, Callable] = registry.one_layer("gaussian")
UNBIASED: frozenset[str] = frozenset(
    registry.names("bernoulli", one_layer=True, unbiased=True))
UNBIASED_CATEGORICAL: frozenset[str] = frozenset(
    registry.names("categorical", one_layer=True, unbiased=True))
UNBIASED_GAUSSIAN: frozenset[str] = frozenset(
    registry.names("gaussian", one_layer=True, unbiased=True))


def get(name: str, family: str = "bernoulli") -> Callable:
  """The one-layer estimator `name` of `family`; a ValueError lists the
  names (`registry.get(name)` is its whole entry)."""
  if family not in registry.FAMILIES:
    raise ValueError(f"Unknown estimator family {family!r}; choose one of "
                     f"{sorted(registry.FAMILIES)}.")
  layers = registry.one_layer(family)
  if name not in layers:
    raise ValueError(f"Unknown {family} estimator {name!r}; choose one of "
                     f"{sorted(layers)}.")
  return layers[name]
