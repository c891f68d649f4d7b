"""Gradient estimators through discrete random variables.

Contract: `grad = est(key, logits, f, **options)` returns one draw of an
estimate of d/dlogits E_b[f(b)], shaped like `logits`, in the logits' dtype
(float16 and bfloat16 logits are computed in float32, f called on float32
samples: `_checks.float32_inside`). Registries map names to estimators, per
family (`BERNOULLI`, `CATEGORICAL`, `GAUSSIAN`); `UNBIASED`,
`UNBIASED_CATEGORICAL` and `UNBIASED_GAUSSIAN` hold the names of the unbiased
ones. The categorical family's estimators live in `categorical` and, each
built on its own coupling or sampling scheme, `stick_breaking`, `carms` and
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
    "get", "indecater", "multisample", "muprop", "noise", "rebar",
    "rebar_terms", "reinforce", "reinforce_loo", "reinmax", "relax", "rodeo",
    "stick_breaking", "straight_through", "straight_through_gumbel",
    "unordered_set", "variance_gradient"]

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
CATEGORICAL: dict[str, Callable] = {
    "reinforce": categorical.reinforce,
    "reinforce_loo": categorical.reinforce_loo,
    "ars": categorical.ars,
    "arsm": categorical.arsm,
    "ars_plus": categorical.ars_plus,
    "arsm_plus": categorical.arsm_plus,
    "disarm_stick_breaking": stick_breaking.disarm_stick_breaking,
    "disarm_stick_breaking_rb": stick_breaking.disarm_stick_breaking_rb,
    "disarm_stick_breaking_iw": stick_breaking.disarm_stick_breaking_iw,
    "carms": carms.carms,
    "gumbel_softmax": categorical.gumbel_softmax,
    "straight_through_gumbel": categorical.straight_through_gumbel,
    "gumbel_rao": categorical.gumbel_rao,
    "reinmax": categorical.reinmax,
    "gapped_straight_through": categorical.gapped_straight_through,
    "indecater": categorical.indecater,
    "unordered_set": unordered_set.unordered_set,
    "rebar": categorical.rebar,
    "relax": categorical.relax,
}

UNBIASED_CATEGORICAL: frozenset[str] = frozenset(
    {"reinforce", "reinforce_loo", "ars", "arsm", "ars_plus", "arsm_plus",
     "disarm_stick_breaking", "disarm_stick_breaking_rb",
     "disarm_stick_breaking_iw", "carms", "indecater", "unordered_set", "rebar",
     "relax"})

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
