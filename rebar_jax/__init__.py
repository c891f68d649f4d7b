"""rebar_jax: gradient estimators through discrete random variables, in JAX."""
from rebar_jax import estimators

__all__ = ["estimators"]

__version__ = "0.1.0"
