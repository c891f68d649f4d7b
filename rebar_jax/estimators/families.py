"""The distribution families of latent layers, by name.

Each family's module holds its chain functions (`noise`, `sample_from_noise`,
`relaxed_from_noise`, `score`, `mean`) and its one-layer estimators; a model
names a layer's family (`rebar_jax.models.protocol.StochasticLayer`), and
the composition reaches the module through `FAMILIES`.
"""
from types import ModuleType

from rebar_jax.estimators import bernoulli
from rebar_jax.estimators import categorical
from rebar_jax.estimators import gaussian

FAMILIES: dict[str, ModuleType] = {
    "bernoulli": bernoulli, "categorical": categorical, "gaussian": gaussian}
