r"""Tuning control variates by minimising the estimator's variance.

For an unbiased estimator g^(phi) in R^M of a gradient g that does not depend on
the control-variate parameters phi (eta, log lambda, the RELAX network, ...),

    d/dphi (1/M) sum_m Var[g^_m] = d/dphi (1/M) (E[g^ . g^] - g . g)
                                 = E[ (2/M) (dg^/dphi)^T g^ ],

so (1/M) |g^|^2 of a single draw is an unbiased loss for the variance (Tucker
et al. 2017 Sec. 3.3; Grathwohl et al. 2018 Sec. 3.3). Its gradient needs
second derivatives (g^ contains d/dl c_phi), which JAX differentiates through.

Also the closed form for REBAR's scale: g^(eta) = r - eta h with E[h] = 0, so

    eta* = argmin_eta sum_m Var[r_m - eta h_m]
         = sum_m E[r_m h_m] / sum_m E[h_m^2],

estimated from draws (`optimal_eta`) or online with moving averages
(`EtaState`).
"""
from typing import Any, Callable, NamedTuple, Optional, TypeVar

import jax
import jax.numpy as jnp

from rebar_jax.estimators import bernoulli
from rebar_jax.estimators import generic

Array = jax.Array
Params = TypeVar("Params")


def variance_loss(estimate: Array) -> Array:
  """(1/M) |g^|^2 for one draw g^: an unbiased loss for the mean variance."""
  return jnp.mean(jnp.square(estimate))


def variance_gradient(estimate_fn: Callable[[Params], Array],
                      cv_params: Params) -> tuple[Array, Params]:
  r"""One draw g^ and the gradient of its variance w.r.t. the control variate.

  Args:
    estimate_fn: phi -> g^, one draw of an unbiased estimator with all its noise
      fixed (close over the key), e.g.
      `lambda p: rebar_with_params(key, logits, f, p)` or
      `lambda p: bernoulli.relax(key, logits, f, cv_params=p)`.
    cv_params: phi, any pytree.

  Returns:
    (g^, d/dphi (1/M)|g^|^2): the draw (use it as the gradient) and an
    unbiased estimate of the gradient of the mean per-coordinate variance, for
    an optax update of phi. Computed in one forward/backward pass. For a batch
    of draws, vmap this and average the second output.
  """
  def loss(p):
    g = estimate_fn(p)
    return variance_loss(g), g

  (_, g), grad = jax.value_and_grad(loss, has_aux=True)(cv_params)
  return g, grad


# REBAR's and RELAX's parameters live beside the estimators that read them.
RebarParams = generic.RebarParams
RelaxParams = generic.RelaxParams
init_relax_params = generic.init_relax_params


def rebar_with_params(key: Array, logits: Array, f: Callable[[Array], Array],
                      params: RebarParams,
                      f_relaxed: Optional[bernoulli.RelaxedFn] = None,
                      tied: bool = True) -> Array:
  """`bernoulli.rebar` with (eta, lambda = exp(log_temperature)) from params."""
  return bernoulli.rebar(key, logits, f, eta=params.eta,
                         temperature=jnp.exp(params.log_temperature),
                         f_relaxed=f_relaxed, tied=tied)


def optimal_eta(r: Array, h: Array, axis: Any = 0) -> Array:
  r"""eta* = sum E[r h] / sum E[h^2] from draws of `bernoulli.rebar_terms`.

  Args:
    r, h: arrays (n, ...) of n draws of the REINFORCE and control-variate terms.
    axis: the draw axis.

  Returns:
    A scalar. With eta* estimated from the same draws that are then used for
    the gradient the result is slightly biased; estimate it from other draws
    (previous steps, `EtaState`) to keep the gradient unbiased.
  """
  rh = jnp.sum(jnp.mean(r * h, axis=axis))
  hh = jnp.sum(jnp.mean(h * h, axis=axis))
  return rh / jnp.maximum(hh, jnp.finfo(hh.dtype).tiny)


class EtaState(NamedTuple):
  """Moving averages of sum E[r h] and sum E[h^2] for the online optimal eta."""
  rh: Array
  hh: Array

  @classmethod
  def init(cls) -> "EtaState":
    return cls(jnp.zeros(()), jnp.zeros(()))

  def update(self, r: Array, h: Array, decay: float = 0.99) -> "EtaState":
    """Folds in the terms of the current draw(s) (any shape, summed)."""
    return EtaState(decay * self.rh + (1 - decay) * jnp.sum(r * h),
                    decay * self.hh + (1 - decay) * jnp.sum(h * h))

  def eta(self, default: float = 1.0) -> Array:
    """The current eta* estimate; `default` until anything has been seen."""
    return jnp.where(self.hh > 0,
                     self.rh / jnp.where(self.hh > 0, self.hh, 1.0), default)
