"""Gradient estimators through discrete random variables.

Contract: `grad = est(key, logits, f, **options)` returns one draw of an
estimate of d/dlogits E_b[f(b)], shaped like `logits`, in the logits' dtype
(float16 and bfloat16 logits are computed in float32, f called on float32
samples: `_checks.float32_inside`). Registries map names to estimators;
`UNBIASED` holds the names of the unbiased ones.
"""
from typing import Callable

from rebar_jax.estimators import bernoulli
from rebar_jax.estimators import categorical
from rebar_jax.estimators import control_variates
from rebar_jax.estimators import exact
from rebar_jax.estimators import gaussian
from rebar_jax.estimators import multisample
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

BERNOULLI: dict[str, Callable] = {
    "reinforce": reinforce,
    "reinforce_loo": reinforce_loo,
    "arm": arm,
    "disarm": disarm,
    "arms": arms,
    "double_cv": double_cv,
    "rodeo": rodeo,
    "indecater": indecater,
    "muprop": muprop,
    "concrete": concrete,
    "straight_through": straight_through,
    "straight_through_gumbel": straight_through_gumbel,
    "reinmax": reinmax,
    "rebar": rebar,
    "relax": relax,
}

UNBIASED: frozenset[str] = frozenset(
    {"reinforce", "reinforce_loo", "arm", "disarm", "arms", "double_cv",
     "rodeo", "indecater", "muprop", "rebar", "relax"})

# Categorical estimators: logits (..., C), one-hot samples.
CATEGORICAL: dict[str, Callable] = dict(categorical.REGISTRY)
UNBIASED_CATEGORICAL: frozenset[str] = categorical.UNBIASED

# Gaussian estimators: parameters (..., H, 2) (mean, log std), real samples.
GAUSSIAN: dict[str, Callable] = dict(gaussian.REGISTRY)
UNBIASED_GAUSSIAN: frozenset[str] = gaussian.UNBIASED


def get(name: str, family: str = "bernoulli") -> Callable:
  """The estimator registered under `name`; a ValueError lists the valid names."""
  registries = {"bernoulli": BERNOULLI, "categorical": CATEGORICAL,
                "gaussian": GAUSSIAN}
  if family not in registries:
    raise ValueError(
        f"Unknown estimator family {family!r}; choose one of {sorted(registries)}.")
  registry = registries[family]
  if name not in registry:
    raise ValueError(
        f"Unknown {family} estimator {name!r}; choose one of {sorted(registry)}.")
  return registry[name]
