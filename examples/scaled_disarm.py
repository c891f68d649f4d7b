r"""Bring your own estimator: one function and one registry entry.

DisARM's estimate scaled by an option of this estimator's own,

    g^ = scale * g^_DisARM,

biased for scale != 1 (so it is registered as biased). Importing this module
registers it; a config that imports it (examples/scaled_disarm_config.py)
trains with it, its option set from the command line:

    python -m rebar_jax.train --config=examples/scaled_disarm_config.py \
        --config.scale=0.5

The entry says what the registry needs to know (its families and the
builder of its training estimator, its cost, paper, options) and the
option's schema (default, meaning, check); `rebar_jax.estimators.registry`
and `rebar_jax.estimators.options` document every field.
"""
from rebar_jax.estimators import bernoulli
from rebar_jax.estimators import options
from rebar_jax.estimators import protocol
from rebar_jax.estimators import registry


def scaled_disarm(key, logits, f, scale=1.0, noise=None):
  """scale times one DisARM draw of d/dlogits E[f(b)] (Bernoulli logits)."""
  return scale * bernoulli.disarm(key, logits, f, noise=noise)


def _positive_float(value):
  return None if isinstance(value, float) and value > 0 else "a float > 0"


if "scaled_disarm" not in registry.ENTRIES:  # imported once per process
  registry.register(registry.Entry(
      name="scaled_disarm", kind=registry.LAYER,
      families={"bernoulli": protocol.one_layer(scaled_disarm, "scale")},
      unbiased_for=None, cost={"bernoulli": "2 evaluations of f"},
      reference="Dong, Mnih & Tucker (2020), NeurIPS, scaled",
      options=("scale",), one_layer={"bernoulli": scaled_disarm},
      new_options=(options.Option(
          "scale", 1.0, "the factor on DisARM's estimate",
          _positive_float),)))
