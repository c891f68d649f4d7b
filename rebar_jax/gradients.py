r"""Model gradients from one-layer estimators: the composition of both.

For a batch x_1..x_B, a recognition model q_phi(b | x) = prod_l q(b_l | b_{l-1})
and a generative model p_theta(x, b), training maximises the mean ELBO

    L = (1/B) sum_i E_{q(b | x_i)}[F_i(b)],   F_i(b) = log p(x_i, b) - log q(b | x_i).

Gradients:
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
initialisation on the linear SBN).

REBAR/RELAX differentiate their control variate along z, so for them f_il has a
relaxed twin where the downstream layers are relaxed too, sigma((enc(s) +
noise)/lambda) (the "soft" pass of the REBAR code); with one layer it is F on
the relaxed sample.

Control-variate parameters (REBAR's eta and log lambda, RELAX's networks, NVIL's
baseline network) are trained by a separate optimiser on the variance loss
(1/B) sum_i |g^_il|^2 (per-logit variance, `control_variates.variance_loss`), or,
for NVIL, on the squared error of the baseline.

Multi-sample objectives (`multisample`: VIMCO, OVIS, VarGrad, ...) take K whole
chains per data point and differentiate their surrogate loss directly.

The fully relaxed estimators (Concrete, Gumbel-softmax) train the model the way
their papers do: the pathwise gradient of the relaxed ELBO F(s), every layer
relaxed, s = sigma((enc(s_prev) + noise)/lambda) (softmax for categorical),
w.r.t. all parameters, so the decoder is trained on the relaxed samples it is
differentiated through. The reported ELBO is the hard one, same noise.
"""
import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rebar_jax import estimators
from rebar_jax.estimators import bernoulli
from rebar_jax.estimators import categorical
from rebar_jax.estimators import control_variates as cv
from rebar_jax.estimators import multisample
from rebar_jax.models import categorical_vae as cat_lib
from rebar_jax.models import sbn as sbn_lib

Array = jax.Array
PRNGKey = jax.Array
Params = Any

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


FAMILIES = {"bernoulli": bernoulli, "categorical": categorical}


def family_of(model) -> str:
  """'bernoulli' for an SBN, 'categorical' for a categorical VAE."""
  if isinstance(model, sbn_lib.SBN):
    return "bernoulli"
  if isinstance(model, cat_lib.CategoricalVAE):
    return "categorical"
  raise TypeError(f"No estimators for model type {type(model).__name__}.")


def registry(family: str) -> dict[str, Callable]:
  """The one-layer estimators of a family, plus NVIL."""
  base = estimators.BERNOULLI if family == "bernoulli" else categorical.REGISTRY
  return dict(base, nvil=base["reinforce"])


@dataclasses.dataclass(frozen=True)
class EstimatorSpec:
  """An estimator chosen by name, with its fixed options.

  Attributes:
    name: a key of `registry(family)`: the family's estimators or "nvil".
    family: "bernoulli" (SBNs) or "categorical" (categorical VAEs).
    temperature: lambda for relaxed estimators (initial value when tuned).
    eta: REBAR's control-variate scale (initial value when tuned).
    num_samples: n for reinforce_loo (gumbel_rao keeps its own default K = 10).
    tune: train REBAR's (eta, log lambda) / RELAX's network on the variance.
    relax_hidden: hidden widths of RELAX's network r_rho(z).
    nvil_decay: decay of NVIL's running mean/variance of the signal.
  """
  name: str
  family: str = "bernoulli"
  temperature: float = 0.5
  eta: float = 1.0
  num_samples: int = 2
  tune: bool = True
  relax_hidden: tuple[int, ...] = (50,)
  nvil_decay: float = 0.8
  num_iw_samples: int = 1

  @property
  def is_multisample(self) -> bool:
    """K-sample objective: a `multisample.MULTISAMPLE` surrogate on K chains.

    A name in both registries (reinforce_loo) is the one-layer estimator when
    num_iw_samples == 1 and the K-chain surrogate when it is larger.
    """
    return self.name in multisample.MULTISAMPLE and (
        self.name not in registry(self.family) or self.num_iw_samples > 1)

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"Unknown family {self.family!r}; choose one of "
                       f"{sorted(FAMILIES)}.")
    if self.num_iw_samples < 1:
      raise ValueError(
          f"num_samples (K) must be >= 1, got {self.num_iw_samples}.")
    if self.is_multisample:
      if self.num_iw_samples < 2:
        raise ValueError(
            f"{self.name!r} is a multi-sample objective: set num_samples "
            "(K) >= 2, e.g. --config.num_samples=10.")
      if self.name in multisample.NEEDS_AUX:
        raise ValueError(
            f"{self.name!r} needs auxiliary samples, which the trainer does "
            "not draw; use ovis_gamma0 / vimco_* or call "
            "multisample.ovis_mc_surrogate directly.")
      return
    valid = sorted(set(registry(self.family)) | set(multisample.MULTISAMPLE))
    if self.name not in valid:
      model = ("a sigmoid belief network" if self.family == "bernoulli" else
               "a categorical VAE")
      raise ValueError(
          f"Unknown estimator {self.name!r} for {model}; choose one of "
          f"{valid}.")
    if not self.temperature > 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}.")
    if self.num_samples < 2 and self.name == "reinforce_loo":
      raise ValueError("reinforce_loo needs num_samples >= 2.")

  def init(self, key: PRNGKey, model) -> EstimatorState:
    """The initial EstimatorState for `model`."""
    if self.is_multisample:
      return EstimatorState((), ())
    if self.name == "rebar":
      return EstimatorState(cv.RebarParams.create(self.eta, self.temperature),
                            ())
    if self.name == "relax":
      num_layers = getattr(model, "num_layers", 1)
      size = (model.num_latents if self.family == "bernoulli" else
              model.num_vars * model.num_classes)
      keys = jax.random.split(key, num_layers)
      return EstimatorState(
          [bernoulli.init_relax_params(k, size, self.relax_hidden,
                                       self.temperature) for k in keys], ())
    if self.name == "nvil":
      params = BaselineMLP().init(key, jnp.zeros((1, model.data_dim)))
      return EstimatorState(params, NvilStats(jnp.zeros(()), jnp.ones(())))
    return EstimatorState((), ())


class Layer(NamedTuple):
  """What one stochastic layer's estimator needs, per data point (axis 0 = B).

  f_hard(b, ctx) is the learning signal F continued from this layer's sample b;
  f_soft(s, temperature, ctx) its relaxed twin; ctx a pytree of per-data-point
  arrays (the data point, the layers above, the downstream noise); b the
  chain's sample at this layer (for an SBN, the b the estimators draw from
  `keys`).
  """
  keys: Array
  logits: Array
  f_hard: Callable[..., Array]
  f_soft: Callable[..., Array]
  ctx: Any
  b: Array


def _signal(model, params, x, bs):
  """F(b) = log p(x, b) - log q(b | x)."""
  log_p, log_q = model.apply(params, x, bs)
  return log_p - log_q


def _sbn_layers(model: sbn_lib.SBN, params: Params, x: Array, key: PRNGKey):
  """The hard chain b_l = H(enc_l(b_{l-1}) + noise_l) and one Layer per layer.

  Each data point and layer gets its own key; the chain's noise for layer l is
  `bernoulli.logistic_noise(key_l)`, the same noise the sampling estimators
  draw from key_l, so their b_l is the chain's b_l.
  """
  batch, num_layers = x.shape[0], model.num_layers
  keys = jax.random.split(key, batch * num_layers).reshape(
      (batch, num_layers) + key.shape)
  noise = tuple(
      jax.vmap(lambda k: bernoulli.logistic_noise(k, (model.num_latents,)))(
          keys[:, l]) for l in range(num_layers))
  encode = lambda p, l, h: model.apply(p, l, h,
                                       method=sbn_lib.SBN.encoder_logits)

  def forward(p):
    h, logits, bs = x, [], []
    for l in range(num_layers):
      lg = encode(p, l, h)  # gradients flow to the encoder through the vjp
      h = bernoulli.hard_threshold(jax.lax.stop_gradient(lg) + noise[l])
      logits.append(lg)
      bs.append(h)
    log_p = model.apply(p, x, tuple(bs), method=sbn_lib.SBN.log_p)
    return (tuple(logits), log_p), tuple(bs)

  (logits, log_p), vjp_fn, bs = jax.vjp(forward, params, has_aux=True)
  log_q = model.apply(params, x, bs, method=sbn_lib.SBN.log_q)

  def chain(layer, b_l, ctx, temperature=None):
    """b_1..b_L: the layers above as sampled, then layer+1.. from b_l."""
    x_i, below, after = ctx
    out, h = list(below) + [b_l], b_l
    for k, nz in zip(range(layer + 1, num_layers), after):
      z = encode(params, k, h) + nz
      h = (bernoulli.hard_threshold(z) if temperature is None else
           jax.nn.sigmoid(z / temperature))
      out.append(h)
    return _signal(model, params, x_i, tuple(out))

  layers = [
      Layer(keys[:, l], logits[l],
            functools.partial(lambda l, b, ctx: chain(l, b, ctx), l),
            functools.partial(lambda l, s, t, ctx: chain(l, s, ctx, t), l),
            (x, bs[:l], noise[l + 1:]), bs[l])
      for l in range(num_layers)]
  return log_p, log_q, vjp_fn, layers


def _categorical_layers(model: cat_lib.CategoricalVAE, params: Params,
                        x: Array, key: PRNGKey):
  """One categorical layer: logits (B, V, C), b a Gumbel-max one-hot sample."""
  batch = x.shape[0]
  key_chain, key_est = jax.random.split(key)
  keys = jax.random.split(key_est, batch)

  def forward(p):
    lg = model.apply(p, x, method=cat_lib.CategoricalVAE.encoder_logits)
    g = jax.random.gumbel(key_chain, lg.shape, lg.dtype)
    b = jax.nn.one_hot(jnp.argmax(jax.lax.stop_gradient(lg) + g, -1),
                       lg.shape[-1], dtype=lg.dtype)
    log_p = model.apply(p, x, b, method=cat_lib.CategoricalVAE.log_p)
    return ((lg,), log_p), b

  ((logits,), log_p), vjp_fn, b = jax.vjp(forward, params, has_aux=True)
  log_q = model.apply(params, x, b, method=cat_lib.CategoricalVAE.log_q)
  f_hard = lambda b, x_i: _signal(model, params, x_i, b)
  f_soft = lambda s, t, x_i: _signal(model, params, x_i, s)
  return log_p, log_q, vjp_fn, [Layer(keys, logits, f_hard, f_soft, x, b)]


# Trained on the relaxed objective, pathwise through every parameter.
RELAXED = ("concrete", "gumbel_softmax")


def _relaxed_gradients(model, spec, params, est_state, x, key):
  """Pathwise gradient of the relaxed ELBO; the hard ELBO with the same noise.

  The noise is the chain noise of `_sbn_layers` (logistic, per data point and
  layer) or the Gumbel noise the categorical estimators draw from the same
  per-data-point keys.
  """
  batch, temperature = x.shape[0], spec.temperature
  if isinstance(model, sbn_lib.SBN):
    keys = jax.random.split(key, batch * model.num_layers).reshape(
        (batch, model.num_layers) + key.shape)
    noise = [jax.vmap(lambda k: bernoulli.logistic_noise(
        k, (model.num_latents,)))(keys[:, l]) for l in range(model.num_layers)]

    def signal(p, hard):
      h, bs = x, []
      for l in range(model.num_layers):
        z = model.apply(p, l, h, method=sbn_lib.SBN.encoder_logits) + noise[l]
        h = (bernoulli.hard_threshold(z) if hard else
             bernoulli.relax_sample(z, temperature))
        bs.append(h)
      return _signal(model, p, x, tuple(bs))
  else:
    _, key_est = jax.random.split(key)
    shape = (model.num_vars, model.num_classes)
    g = jax.vmap(lambda k: categorical._sample(k, jnp.zeros(shape))[0])(  # pylint: disable=protected-access
        jax.random.split(key_est, batch))

    def signal(p, hard):
      lg = model.apply(p, x, method=cat_lib.CategoricalVAE.encoder_logits)
      z = jax.nn.log_softmax(lg, axis=-1) + g
      b = (categorical.one_hot_argmax(z) if hard else
           categorical.relax_sample(z, temperature))
      return _signal(model, p, x, b)

  grads = jax.grad(lambda p: -jnp.mean(signal(p, hard=False)))(params)
  metrics = {"elbo": jnp.mean(signal(params, hard=True)),
             "estimator_loss": jnp.zeros(())}
  return grads, jax.tree.map(jnp.zeros_like, est_state.params), \
      est_state.stats, metrics


def model_gradients(model, spec: EstimatorSpec, params: Params,
                    est_state: EstimatorState, x: Array, key: PRNGKey
                    ) -> tuple[Params, Any, Any, dict[str, Array]]:
  """Gradients of the negative mean ELBO and of the estimator's own loss.

  Args:
    model: an SBN (Bernoulli estimators) or a CategoricalVAE (categorical).
    spec: which estimator, with its options; its family must match the model.
    params: model variables.
    est_state: the estimator's learned state.
    x: (B, D) binary batch.
    key: one key for this step.

  Returns:
    (model_grads, estimator_param_grads, new_estimator_stats, metrics): the
    gradients are of losses to MINIMISE, -ELBO for the model, the variance
    loss (NVIL: the baseline's squared error) for the estimator parameters;
    metrics hold the batch-mean ELBO of the sampled chain and that loss.
  """
  if family_of(model) != spec.family:
    raise ValueError(
        f"Estimator family {spec.family!r} does not fit "
        f"{type(model).__name__}, which needs {family_of(model)!r} estimators.")
  if spec.is_multisample:
    return _multisample_gradients(model, spec, params, est_state, x, key)
  if spec.name in RELAXED:
    return _relaxed_gradients(model, spec, params, est_state, x, key)
  build = (_sbn_layers if isinstance(model, sbn_lib.SBN) else
           _categorical_layers)
  log_p, log_q, vjp_fn, layers = build(model, params, x, key)
  batch = x.shape[0]
  elbo = log_p - log_q  # (B,), the sampled chain's ELBO

  cv_grads, est_loss = None, jnp.zeros(())
  new_stats, extra = est_state.stats, ()
  if spec.name == "nvil":
    # NVIL: baseline b_psi(x) + running mean c, signal scaled by 1/max(1, sd).
    baseline, baseline_vjp = jax.vjp(
        lambda psi: BaselineMLP().apply(psi, x - _mean(model)),
        est_state.params)
    centred = jax.lax.stop_gradient(elbo) - baseline
    stats, decay = est_state.stats, spec.nvil_decay
    new_stats = NvilStats(
        decay * stats.mean + (1 - decay) * jnp.mean(centred),
        decay * stats.var + (1 - decay) * jnp.var(centred))
    residual = centred - stats.mean  # d/dpsi (1/B) sum residual^2, F fixed
    (cv_grads,) = baseline_vjp(-2.0 * residual / batch)
    est_loss = jnp.mean(jnp.square(residual))
    extra = (baseline,)

  if spec.name in ("reinforce", "nvil") and spec.family == "bernoulli":
    # The same estimates as the per-layer estimators below, without
    # recomputing them: in an SBN a layer's b is the one the estimator would
    # draw from its key and REINFORCE's signal F(b) is the chain's ELBO for
    # every layer. XLA merges neither the estimator's second noise draw nor its
    # second evaluation of F with the chain's (~30% of a batch-24 CPU step).
    signal = (residual if spec.name == "nvil" else
              jax.lax.stop_gradient(elbo))  # (B,), baseline subtracted
    estimates = [signal[:, None] * bernoulli.score(layer.logits, layer.b)
                 for layer in layers]
  else:
    estimates = []
    for l, layer in enumerate(layers):
      def one(k, lg, ctx, extra, layer=layer, l=l):
        f = lambda b: layer.f_hard(b, ctx)
        fr = lambda s, t: layer.f_soft(s, t, ctx)
        return _one_estimate(spec, est_state, k, lg, f, fr, extra, l)

      est, grads_l, loss_l = jax.vmap(one)(layer.keys, layer.logits,
                                           layer.ctx, extra)
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


def _multisample_gradients(model, spec, params, est_state, x, key):
  r"""Gradients of a K-sample surrogate, (1/B) sum_i surrogate(log w_i, log q_i).

  For each data point, K independent hard chains b_k ~ q(b | x) (the samples
  carry no gradient); log w_k = log p(x, b_k) - log q(b_k | x) and log q_k are
  differentiated w.r.t. all parameters, and the surrogate's gradient is the
  estimator (`multisample`: VIMCO, OVIS-gamma, REINFORCE-LOO, VarGrad, RWS).
  """
  surrogate = multisample.MULTISAMPLE[spec.name]
  keys = jax.random.split(key, x.shape[0] * spec.num_iw_samples).reshape(
      (x.shape[0], spec.num_iw_samples) + key.shape)

  def loss(p):
    def chain(x_i, k):
      b, _ = model.apply(p, x_i, k, method="sample")
      log_p, log_q = model.apply(p, x_i, jax.lax.stop_gradient(b))
      return log_p - log_q, log_q

    log_w, log_q = jax.vmap(jax.vmap(chain, in_axes=(None, 0)))(x, keys)
    losses = jax.vmap(surrogate)(log_w, log_q)
    iw = jax.vmap(multisample.iw_bound)(log_w)
    return jnp.mean(losses), (jnp.mean(log_w), jnp.mean(iw))

  (_, (elbo, iw)), grads = jax.value_and_grad(loss, has_aux=True)(params)
  metrics = {"elbo": elbo, "estimator_loss": jnp.zeros(()), "iw_bound": iw}
  return grads, (), est_state.stats, metrics


def _mean(model):
  return (np.zeros(model.data_dim, np.float32) if model.train_mean is None
          else np.asarray(model.train_mean, np.float32))


def _one_estimate(spec, est_state, key, logits, f, f_relaxed, extra, layer):
  """One data point, one layer: (estimate, cv param grads, variance loss)."""
  name, fam = spec.name, FAMILIES[spec.family]
  if name == "nvil":
    (baseline,) = extra
    est = fam.reinforce(key, logits, f,
                        baseline=baseline + est_state.stats.mean)
    return est, (), jnp.zeros(())
  if name == "rebar":
    def estimate(p):
      return fam.rebar(key, logits, f, eta=p.eta,
                       temperature=jnp.exp(p.log_temperature),
                       f_relaxed=f_relaxed)
  elif name == "relax":
    def estimate(all_params):
      return fam.relax(key, logits, f, cv_params=all_params[layer],
                       f_relaxed=f_relaxed)
  else:
    options = {
        "reinforce_loo": {"num_samples": spec.num_samples},
        "concrete": {"temperature": spec.temperature},
        "gumbel_softmax": {"temperature": spec.temperature},
        "straight_through_gumbel": {"temperature": spec.temperature},
        "gumbel_rao": {"temperature": spec.temperature},
    }.get(name, {})
    est = registry(spec.family)[name](key, logits, f, **options)
    return est, (), jnp.zeros(())
  if not spec.tune:
    return estimate(est_state.params), (), jnp.zeros(())
  est, grads = cv.variance_gradient(estimate, est_state.params)
  return est, grads, cv.variance_loss(est)
