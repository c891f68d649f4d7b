"""Gradient estimators: `grad = est(key, logits, f, **options)`, one draw each."""
from rebar_jax.estimators import exact
