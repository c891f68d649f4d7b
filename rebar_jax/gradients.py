r"""Model gradients from one-layer estimators: the composition of both.

For a batch x_1..x_B, a recognition model q_phi(b | x) = prod_l q(b_l | b_{l-1})
and a generative model p_theta(x, b), training maximises the mean ELBO

    L = (1/B) sum_i E_{q(b | x_i)}[F_i(b)],   F_i(b) = log p(x_i, b) - log q(b | x_i).

Gradients (ARCHITECTURE.md):
  * theta: d/dtheta log p(x_i, b_i) at the sampled chain b_i (pathwise, exact
    given b).
  * phi, layer l: est(key_il, logits_il, f_il) pulled back through the encoder of
    layer l, where logits_il = enc_l(b_{i,l-1}) and f_il(b_l) continues the chain
    from b_l with the downstream noise of the same draw held fixed, then returns
    F_i. Each layer's estimate is unbiased for that layer's gradient.
  * The direct term -d/dphi log q(b | x) of F (score of the sample itself) has
    zero mean and is DROPPED, as in the REBAR/DisARM code.

One learning signal per data point: the estimator is vmapped over the batch with
its own key, logits and f_i, never fed a batch-summed f (500x the variance at
initialisation, ARCHITECTURE.md).

REBAR/RELAX differentiate their control variate along z, so for them f_il has a
relaxed twin where the downstream layers are relaxed too, sigma((enc(s) +
noise)/lambda) (the "soft" pass of the REBAR code); with one layer it is F on
the relaxed sample.

Control-variate parameters (REBAR's eta and log lambda, RELAX's networks, NVIL's
baseline network) are trained by a separate optimiser on the variance loss
(1/B) sum_i |g^_il|^2 (per-logit variance, `control_variates.variance_loss`), or,
for NVIL, on the squared error of the baseline.
"""
import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rebar_jax import estimators
from rebar_jax.estimators import bernoulli
from rebar_jax.estimators import control_variates as cv
from rebar_jax.models import sbn as sbn_lib

Array = jax.Array
PRNGKey = jax.Array
Params = Any

# Estimators that use the tuned/learned parameters of EstimatorState.
TUNED = ("rebar", "relax", "nvil")
# Estimators for SBNs beyond the one-layer registry.
EXTRA_BERNOULLI = ("nvil",)


class EstimatorState(NamedTuple):
  """What an estimator learns during training.

  params: trained by the control-variate optimiser (RebarParams, a list of
    RelaxParams (one per layer), NVIL baseline network variables, or ()).
  stats: not trained by gradient: NVIL's running mean and variance of the
    centred learning signal, () otherwise.
  """
  params: Any
  stats: Any


class NvilStats(NamedTuple):
  mean: Array
  var: Array


class BaselineMLP(nn.Module):
  """NVIL's input-dependent baseline b_psi(x): D -> hidden -> 1 (tanh).

  Mnih & Gregor (2014), Sec. 2.3.1; the REBAR code uses 100 hidden units.
  """
  hidden: int = 100

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = jnp.tanh(nn.Dense(self.hidden)(x))
    return nn.Dense(1)(h)[..., 0]


@dataclasses.dataclass(frozen=True)
class EstimatorSpec:
  """An estimator chosen by name, with its fixed options.

  Attributes:
    name: a key of `estimators.BERNOULLI` or "nvil".
    temperature: lambda for relaxed estimators (initial value when tuned).
    eta: REBAR's control-variate scale (initial value when tuned).
    num_samples: n for reinforce_loo.
    tune: train REBAR's (eta, log lambda) / RELAX's network on the variance.
    relax_hidden: hidden widths of RELAX's network r_rho(z).
    nvil_decay: decay of NVIL's running mean/variance of the signal.
  """
  name: str
  temperature: float = 0.5
  eta: float = 1.0
  num_samples: int = 2
  tune: bool = True
  relax_hidden: tuple[int, ...] = (50,)
  nvil_decay: float = 0.8

  def __post_init__(self):
    valid = sorted(set(estimators.BERNOULLI) | set(EXTRA_BERNOULLI))
    if self.name not in valid:
      raise ValueError(
          f"Unknown estimator {self.name!r} for a sigmoid belief network; "
          f"choose one of {valid}.")
    if not self.temperature > 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}.")
    if self.num_samples < 2 and self.name == "reinforce_loo":
      raise ValueError("reinforce_loo needs num_samples >= 2.")

  def init(self, key: PRNGKey, model: sbn_lib.SBN) -> EstimatorState:
    """The initial EstimatorState for `model`."""
    if self.name == "rebar":
      return EstimatorState(cv.RebarParams.create(self.eta, self.temperature),
                            ())
    if self.name == "relax":
      keys = jax.random.split(key, model.num_layers)
      return EstimatorState(
          [bernoulli.init_relax_params(k, model.num_latents,
                                       self.relax_hidden, self.temperature)
           for k in keys], ())
    if self.name == "nvil":
      params = BaselineMLP().init(key, jnp.zeros((1, model.data_dim)))
      return EstimatorState(params, NvilStats(jnp.zeros(()), jnp.ones(())))
    return EstimatorState((), ())


class Chain(NamedTuple):
  """One draw of the hard recognition chain for a batch (leading axis B)."""
  noise: tuple[Array, ...]   # L x (B, H) logistic noise, fixed for the draw
  logits: tuple[Array, ...]  # L x (B, H) encoder logits
  bs: tuple[Array, ...]      # L x (B, H) hard samples


def _apply(model, params, *args, method):
  return model.apply(params, *args, method=method)


def _continue_chain(model, params, b_l, layer, noise_after, relax_with=None):
  """Samples layers layer+1..L-1 from b_l with fixed noise (hard or relaxed)."""
  bs, h = [b_l], b_l
  for k, noise in zip(range(layer + 1, model.num_layers), noise_after):
    z = _apply(model, params, k, h, method=sbn_lib.SBN.encoder_logits) + noise
    h = bernoulli.hard_threshold(z) if relax_with is None else jax.nn.sigmoid(
        z / relax_with)
    bs.append(h)
  return bs


def _signal(model, params, x, bs):
  """F(b) = log p(x, b) - log q(b | x)."""
  log_p, log_q = model.apply(params, x, tuple(bs))
  return log_p - log_q


def sbn_gradients(model: sbn_lib.SBN, spec: EstimatorSpec, params: Params,
                  est_state: EstimatorState, x: Array, key: PRNGKey
                  ) -> tuple[Params, Any, EstimatorState, dict[str, Array]]:
  """Gradients of the negative mean ELBO and of the estimator's own loss.

  Args:
    model: the SBN.
    spec: which estimator, with its options.
    params: model variables.
    est_state: the estimator's learned state.
    x: (B, D) binary batch.
    key: one key for this step.

  Returns:
    (model_grads, estimator_param_grads, new_est_state_stats, metrics) where the
    gradients are of losses to MINIMISE: -ELBO for the model, the variance loss
    (or NVIL's baseline MSE) for the estimator parameters; metrics hold the
    batch-mean ELBO of the sampled chain and the estimator variance loss.
  """
  batch = x.shape[0]
  num_layers = model.num_layers
  keys = jax.random.split(key, batch * num_layers).reshape(
      (batch, num_layers) + key.shape)
  noise = tuple(
      jax.vmap(lambda k: bernoulli.logistic_noise(k, (model.num_latents,)))(
          keys[:, l]) for l in range(num_layers))

  def forward(p):
    h, logits, bs = x, [], []
    for l in range(num_layers):
      lg = _apply(model, p, l, h, method=sbn_lib.SBN.encoder_logits)
      h = bernoulli.hard_threshold(jax.lax.stop_gradient(lg) + noise[l])
      logits.append(lg)
      bs.append(h)
    log_p = _apply(model, p, x, tuple(bs), method=sbn_lib.SBN.log_p)
    return (tuple(logits), log_p), tuple(bs)

  (logits, log_p), vjp_fn, bs = jax.vjp(forward, params, has_aux=True)
  log_q = _apply(model, params, x, bs, method=sbn_lib.SBN.log_q)
  elbo = log_p - log_q  # (B,)

  estimates, cv_grads = [], None
  baseline, new_stats, est_loss = None, est_state.stats, jnp.zeros(())
  if spec.name == "nvil":
    baseline_fn = lambda psi: BaselineMLP().apply(psi, x - _mean(model))
    baseline, baseline_vjp = jax.vjp(baseline_fn, est_state.params)
    centred = jax.lax.stop_gradient(elbo) - baseline
    stats = est_state.stats
    new_stats = NvilStats(
        spec.nvil_decay * stats.mean + (1 - spec.nvil_decay) * jnp.mean(centred),
        spec.nvil_decay * stats.var
        + (1 - spec.nvil_decay) * jnp.var(centred))
    # d/dpsi (1/B) sum (F - c - b_psi(x))^2, with F fixed.
    residual = centred - stats.mean
    (cv_grads,) = baseline_vjp(-2.0 * residual / batch)
    est_loss = jnp.mean(jnp.square(residual))

  for l in range(num_layers):
    def f_hard(b_l, x_i, below, after, l=l):
      chain = list(below) + _continue_chain(model, params, b_l, l, after)
      return _signal(model, params, x_i, chain)

    def f_soft(s_l, temperature, x_i, below, after, l=l):
      chain = list(below) + _continue_chain(model, params, s_l, l, after,
                                            relax_with=temperature)
      return _signal(model, params, x_i, chain)

    below = bs[:l]
    after = noise[l + 1:]
    layer_keys = keys[:, l]

    def one(k, lg, x_i, below_i, after_i, extra, l=l):
      f = lambda b: f_hard(b, x_i, below_i, after_i)
      fr = lambda s, t: f_soft(s, t, x_i, below_i, after_i)
      return _one_estimate(spec, est_state, k, lg, f, fr, extra, l)

    extra = (baseline,) if spec.name == "nvil" else ()
    est, grads_l, loss_l = jax.vmap(one)(layer_keys, logits[l], x, below,
                                         after, extra)
    estimates.append(est)
    if spec.name in ("rebar", "relax") and spec.tune:
      grads_l = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads_l)
      cv_grads = grads_l if cv_grads is None else jax.tree.map(
          jnp.add, cv_grads, grads_l)
      est_loss = est_loss + jnp.mean(loss_l)

  if spec.name == "nvil":
    scale = 1.0 / jnp.maximum(1.0, jnp.sqrt(est_state.stats.var))
    estimates = [e * scale for e in estimates]

  (model_grads,) = vjp_fn((tuple(-e / batch for e in estimates),
                           -jnp.ones_like(log_p) / batch))
  if cv_grads is None:
    cv_grads = jax.tree.map(jnp.zeros_like, est_state.params)
  metrics = {"elbo": jnp.mean(elbo), "estimator_loss": est_loss}
  return model_grads, cv_grads, new_stats, metrics


def _mean(model):
  return (np.zeros(model.data_dim, np.float32) if model.train_mean is None
          else np.asarray(model.train_mean, np.float32))


def _one_estimate(spec, est_state, key, logits, f, f_relaxed, extra, layer):
  """One data point, one layer: (estimate, cv param grads, variance loss)."""
  name = spec.name
  if name == "nvil":
    (baseline,) = extra
    est = estimators.reinforce(key, logits, f,
                               baseline=baseline + est_state.stats.mean)
    return est, (), jnp.zeros(())
  if name == "rebar":
    if not spec.tune:
      est = estimators.rebar(key, logits, f, eta=spec.eta,
                             temperature=spec.temperature, f_relaxed=f_relaxed)
      return est, (), jnp.zeros(())
    est, grads = cv.variance_gradient(
        lambda p: cv.rebar_with_params(key, logits, f, p, f_relaxed=f_relaxed),
        est_state.params)
    return est, grads, cv.variance_loss(est)
  if name == "relax":
    def estimate(all_params):
      return estimators.relax(key, logits, f, cv_params=all_params[layer],
                              f_relaxed=f_relaxed)
    if not spec.tune:
      return estimate(est_state.params), (), jnp.zeros(())
    est, grads = cv.variance_gradient(estimate, est_state.params)
    return est, grads, cv.variance_loss(est)
  options = {
      "reinforce_loo": {"num_samples": spec.num_samples},
      "concrete": {"temperature": spec.temperature},
      "straight_through_gumbel": {"temperature": spec.temperature},
  }.get(name, {})
  return estimators.BERNOULLI[name](key, logits, f, **options), (), jnp.zeros(())
