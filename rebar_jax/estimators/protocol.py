r"""Estimators as pairs of pure functions, and the one registry of their names.

In the spirit of optax's `GradientTransformation`, a training estimator is a
NamedTuple of pure functions

    init(key, info) -> EstimatorState              its trainable state
    estimate(state, problem) -> Estimate           one draw per data point
    summary(params) -> {name: float}               tuned scalars to log

where `problem` holds, for every stochastic layer l of a model and every data
point i of a batch, the logits l_il of q(b_l | x_i, b_<l), a key, and the
learning signal f_il(b_l) continuing the chain from b_l (its downstream noise
fixed) together with its relaxed twin (see `Layer`). `estimate` returns

    g^_il ~ d/dl_il E_{b_l}[f_il(b_l)]   (one draw, shaped like l_il),

the gradient of the estimator's own loss w.r.t. its trained parameters (the
variance loss (1/B) sum_i |g^_il|^2 for REBAR and RELAX, Tucker et al. 2017
Sec. 3.3, Grathwohl et al. 2018 Sec. 3.3; the baseline's squared error for
NVIL, Mnih & Gregor 2014 Sec. 2.3), its updated untrained statistics, and that
loss. The composition (`rebar_jax.gradients`) pulls g^ back through the
encoders and never asks which estimator it holds.

A builder `build(options: Options) -> Estimator` makes one; the registry
(`rebar_jax.estimators.registry`) maps names to builders. A one-layer
estimator with the contract `est(key, logits, f, **options) -> grad` becomes
a training estimator through `stateless` (`one_layer`, `k_samples`); one with
trained control-variate parameters through `tuned`.
"""
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rebar_jax.estimators import bernoulli
from rebar_jax.estimators import control_variates as cv
from rebar_jax.estimators.families import FAMILIES
from rebar_jax.estimators.options import Options

Array = jax.Array
PRNGKey = jax.Array
Params = Any



class EstimatorState(NamedTuple):
  """What an estimator learns during training.

  params: trained by the control-variate optimiser (RebarParams, a list of
    RelaxParams (one per layer), NVIL's baseline network variables, or ()).
  stats: not trained by gradient (NVIL's running moments of the signal), or ().
  """
  params: Any
  stats: Any


class ModelInfo(NamedTuple):
  """What `init` may know of a model.

  layer_shapes: the event shape of each stochastic layer, e.g. (H,) for H
    Bernoulli units or (V, C) for V categorical variables of C classes.
  data_dim: D, the size of a data point.
  layer_families: the family name of each layer (a key of FAMILIES).
  """
  layer_shapes: tuple[tuple[int, ...], ...]
  data_dim: int
  layer_families: tuple[str, ...] = ()


class Layer(NamedTuple):
  """One stochastic layer's estimation problem, per data point (axis 0 = B).

  keys: (B,) keys, one per data point, from which the estimator draws b_l.
  logits: (B, *event) logits l_il of q(b_l | x_i, b_<l).
  f_hard: (b, ctx) -> F, the learning signal continued from b (scalar).
  f_soft: (s, temperature, ctx) -> F on the relaxed chain from s (scalar).
  ctx: a pytree of per-data-point arrays f_hard and f_soft close over.
  b: (B, *event) the chain's sample at this layer: the sample the family's
    estimators draw from `keys`, so f_hard(b) is the chain's signal F.
  family: the module of the layer's one-layer estimators (`bernoulli`,
    `categorical` or `gaussian`): its `score(logits, b)` and estimator
    functions.
  noise: (B, *event) the chain's noise at this layer, `family.noise` of
    `keys`, from which b was sampled. Estimators are given it (`noise=`), so
    a layer's noise is drawn once per step, by the chain.
  """
  keys: Array
  logits: Array
  f_hard: Callable[..., Array]
  f_soft: Callable[..., Array]
  ctx: Any
  b: Array
  family: Any
  noise: Array


class Problem(NamedTuple):
  """Every layer of one batch, plus what baselines may use.

  layers: the layers, top (closest to x) first.
  signal: (B,) F_i of the sampled chain, no gradient.
  inputs: (B, D) the data points minus the training mean (baseline inputs).
  """
  layers: Sequence[Layer]
  signal: Array
  inputs: Array


class Estimate(NamedTuple):
  """One draw for a batch.

  grads: per layer, (B, *event) g^_il, estimates of d/dl E[f_il].
  param_grads: gradient of `loss` w.r.t. state.params (zeros when untrained).
  stats: the updated state.stats.
  loss: scalar, the estimator's own loss (0 when it has none).
  """
  grads: list[Array]
  param_grads: Any
  stats: Any
  loss: Array


def _no_summary(params) -> dict[str, float]:
  del params
  return {}


class Estimator(NamedTuple):
  """A training estimator: pure functions of its state.

  relaxed_objective: instead of `estimate`, the model is trained by the
    pathwise gradient of the relaxed ELBO (Concrete, Gumbel-softmax), every
    layer relaxed at `Options.temperature`.
  """
  init: Callable[[PRNGKey, ModelInfo], EstimatorState]
  estimate: Callable[[EstimatorState, Problem], Estimate]
  summary: Callable[[Any], dict[str, float]] = _no_summary
  relaxed_objective: bool = False


def _empty_init(key: PRNGKey, info: ModelInfo) -> EstimatorState:
  del key, info
  return EstimatorState((), ())


def _zeros(params):
  return jax.tree.map(jnp.zeros_like, params)


def per_data_point(layer: Layer, one: Callable[..., Any]) -> Any:
  """vmap of one(key, logits, f, f_relaxed, noise) over the data points."""
  def run(key, logits, ctx, noise):
    f = lambda b: layer.f_hard(b, ctx)
    f_relaxed = lambda s, t: layer.f_soft(s, t, ctx)
    return one(key, logits, f, f_relaxed, noise)

  return jax.vmap(run)(layer.keys, layer.logits, layer.ctx, layer.noise)


def stateless(estimator: Callable[..., Array], **options) -> Estimator:
  """A one-layer estimator est(key, logits, f, noise=, **options), no state.

  It is given the chain's noise of the layer (`Layer.noise`), so it samples
  the chain's b without drawing the noise again.
  """
  def estimate(state, problem):
    grads = [per_data_point(
        layer, lambda k, lg, f, fr, nz: estimator(k, lg, f, noise=nz,
                                                  **options))
             for layer in problem.layers]
    return Estimate(grads, _zeros(state.params), state.stats, jnp.zeros(()))

  return Estimator(_empty_init, estimate)


def _score_times(signal: Array, layer: Layer) -> Array:
  """signal_i * d/dl log q(b_il), the REINFORCE estimate at the chain's b."""
  signal = signal.reshape(signal.shape + (1,) * (layer.logits.ndim - 1))
  return signal * layer.family.score(layer.logits, layer.b)


def reinforce(options: Options) -> Estimator:
  r"""REINFORCE per layer, g^_il = F_i(b_i) d/dl log q(b_il) (Williams 1992).

  The chain's b is the estimator's own sample (`Layer.b`) and F(b) of every
  layer is the chain's signal, so the estimate is computed from them without
  drawing b or evaluating F again: the same draws as `family.reinforce` on
  the layer's keys, which XLA would not merge with the chain's (~30% of a
  batch-24 CPU step).
  """
  del options

  def estimate(state, problem):
    grads = [_score_times(problem.signal, layer) for layer in problem.layers]
    return Estimate(grads, _zeros(state.params), state.stats, jnp.zeros(()))

  return Estimator(_empty_init, estimate)


class NvilStats(NamedTuple):
  """Running mean and variance of NVIL's centred learning signal."""
  mean: Array
  var: Array


class BaselineMLP(nn.Module):
  """NVIL's input-dependent baseline b_psi(x): D -> hidden -> 1 (tanh).

  Mnih & Gregor (2014), Sec. 2.3.1; the REBAR code uses 100 hidden units.
  """
  hidden: int = 100
  num_outputs: int = 0  # 0: one scalar per data point; n: n of them

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x (..., D) -> (...) or, with num_outputs = n, (..., n)."""
    h = jnp.tanh(nn.Dense(self.hidden)(x))
    out = nn.Dense(max(self.num_outputs, 1))(h)
    return out if self.num_outputs else out[..., 0]


def nvil(options: Options) -> Estimator:
  r"""NVIL: REINFORCE with a learned baseline and variance normalisation.

      g^_il = (F_i - b_psi(x_i) - c) d/dl log q(b_il) / max(1, sqrt(v)),

  c and v running means (decay `options.nvil_decay`) of the mean and variance
  of F - b_psi(x) over batches; psi minimises (1/B) sum_i (F_i - b_psi(x_i)
  - c)^2 with F fixed. Unbiased up to the positive scale 1/max(1, sqrt(v)),
  which depends only on earlier batches.

  Reference: Mnih & Gregor (2014), "Neural variational inference and learning
  in belief networks", ICML, Sec. 2.3 and Alg. 1.
  """
  def init(key, info):
    params = BaselineMLP().init(key, jnp.zeros((1, info.data_dim)))
    return EstimatorState(params, NvilStats(jnp.zeros(()), jnp.ones(())))

  def estimate(state, problem):
    baseline, baseline_vjp = jax.vjp(
        lambda psi: BaselineMLP().apply(psi, problem.inputs), state.params)
    centred = problem.signal - baseline
    stats, decay = state.stats, options.nvil_decay
    new_stats = NvilStats(
        decay * stats.mean + (1 - decay) * jnp.mean(centred),
        decay * stats.var + (1 - decay) * jnp.var(centred))
    residual = centred - stats.mean  # d/dpsi (1/B) sum residual^2, F fixed
    (param_grads,) = baseline_vjp(-2.0 * residual / centred.shape[0])

    scale = 1.0 / jnp.maximum(1.0, jnp.sqrt(stats.var))
    grads = [_score_times(residual, layer) * scale  # as in `reinforce`
             for layer in problem.layers]
    return Estimate(grads, param_grads, new_stats,
                    jnp.mean(jnp.square(residual)))

  return Estimator(init, estimate)


def muprop_baseline(options: Options) -> Estimator:
  r"""MuProp with a learned input-dependent baseline and variance normalisation.

      g^_il = [(r_il - b_psi(x_i)_l - c_l) d/dl log q(b_il)
               + f'_il(m) sigmoid'(l_il)] / max(1, sqrt(v_l)),
      r_il = F_il(b) - F_il(m) - F'_il(m) . (b - m),   m = sigmoid(l_il),

  `bernoulli.muprop` per layer with NVIL's machinery (`nvil`) on its
  residual: a baseline network with one output per layer, psi minimising
  (1/B) sum_il (r_il - b_psi(x_i)_l - c_l)^2 with r fixed, and running means
  c_l, v_l (decay `options.nvil_decay`) of the mean and variance of
  r_l - b_psi(x)_l. The whole estimate is divided by the scale, so it stays
  unbiased up to a positive factor set by earlier batches. Bernoulli layers.

  Reference: Gu, Levine, Sutskever & Mnih (2016), "MuProp", ICLR, Sec. 4
  (MuProp with the baseline and variance normalisation of Mnih & Gregor 2014,
  as the REBAR code's MuProp).
  """
  def init(key, info):
    num_layers = len(info.layer_shapes)
    params = BaselineMLP(num_outputs=num_layers).init(
        key, jnp.zeros((1, info.data_dim)))
    return EstimatorState(params, NvilStats(jnp.zeros((num_layers,)),
                                            jnp.ones((num_layers,))))

  def estimate(state, problem):
    num_layers = len(problem.layers)
    baseline, baseline_vjp = jax.vjp(
        lambda psi: BaselineMLP(num_outputs=num_layers).apply(
            psi, problem.inputs), state.params)  # (B, L)
    terms = [per_data_point(layer, lambda k, lg, f, fr, nz, family=(
        layer.family): family.muprop_terms(k, lg, f, noise=nz))
             for layer in problem.layers]
    # flax types apply's result as (output, mutated variables) too; no mutable.
    centred = jnp.stack([r for r, _, _ in terms], axis=1) - baseline  # type: ignore[operator]
    stats, decay = state.stats, options.nvil_decay
    new_stats = NvilStats(
        decay * stats.mean + (1 - decay) * jnp.mean(centred, axis=0),
        decay * stats.var + (1 - decay) * jnp.var(centred, axis=0))
    residual = centred - stats.mean  # (B, L)
    (param_grads,) = baseline_vjp(-2.0 * residual / centred.shape[0])
    scale = 1.0 / jnp.maximum(1.0, jnp.sqrt(stats.var))
    grads = []
    for l, (layer, (_, score_b, analytic)) in enumerate(
        zip(problem.layers, terms)):
      r = residual[:, l].reshape((-1,) + (1,) * (layer.logits.ndim - 1))
      grads.append((r * score_b + analytic) * scale[l])
    return Estimate(grads, param_grads, new_stats,
                    jnp.sum(jnp.mean(jnp.square(residual), axis=0)))

  return Estimator(init, estimate)


def unit_scale(state: EstimatorState) -> EstimatorState:
  """The state with NVIL's variance normalisation turned off (v = 1).

  NVIL divides its estimate by max(1, sqrt(v)), a step size rather than a
  variance reduction; comparing estimators' variances, set it to 1 so that
  only the baseline's effect is measured. Other states are returned as given.
  """
  is_nvil = lambda s: isinstance(s, NvilStats)
  return state._replace(stats=jax.tree.map(
      lambda s: s._replace(var=jnp.ones_like(s.var)) if is_nvil(s) else s,
      state.stats, is_leaf=is_nvil))


def tuned(init: Callable[[PRNGKey, ModelInfo], EstimatorState],
          estimator: Callable[..., Array], tune: bool,
          summary: Callable[[Any], dict[str, float]] = _no_summary
          ) -> Estimator:
  r"""An estimator whose control variate's parameters phi minimise its variance.

  estimator(params, layer_index, family, key, logits, f, f_relaxed, noise)
  -> g^ is one draw, unbiased for every phi (family: the layer's
  `Layer.family`; noise: its `Layer.noise`). With `tune`, each layer's draws
  come with
  d/dphi (1/B) sum_i |g^_il|^2 (`control_variates.variance_gradient`), summed
  over layers; the loss is the matching sum of variance losses.
  """
  def estimate(state, problem):
    grads, param_grads, loss = [], None, jnp.zeros(())
    for l, layer in enumerate(problem.layers):
      def one(k, lg, f, fr, nz, l=l, layer=layer):
        draw = lambda p: estimator(p, l, layer.family, k, lg, f, fr, nz)
        if not tune:
          return draw(state.params), (), jnp.zeros(())
        est, g = cv.variance_gradient(draw, state.params)
        return est, g, cv.variance_loss(est)

      est, grads_l, loss_l = per_data_point(layer, one)
      grads.append(est)
      if tune:
        grads_l = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads_l)
        param_grads = grads_l if param_grads is None else jax.tree.map(
            jnp.add, param_grads, grads_l)
        loss = loss + jnp.mean(loss_l)
    if param_grads is None:
      param_grads = _zeros(state.params)
    return Estimate(grads, param_grads, state.stats, loss)

  return Estimator(init, estimate, summary)


def rebar(options: Options) -> Estimator:
  r"""REBAR with (eta, log lambda) shared by all layers, tuned on the variance.

  Reference: Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein (2017), "REBAR:
  Low-variance, unbiased gradient estimates for discrete latent variable
  models", NeurIPS, Sec. 3.
  """
  def init(key, info):
    del key, info
    return EstimatorState(
        cv.RebarParams.create(options.eta, options.temperature), ())

  def draw(p, layer_index, family, key, logits, f, f_relaxed, noise):
    del layer_index
    return family.rebar(key, logits, f, eta=p.eta,
                        temperature=jnp.exp(p.log_temperature),
                        f_relaxed=f_relaxed, noise=noise)

  def summary(p):
    return {"eta": float(p.eta),
            "temperature": float(np.exp(p.log_temperature))}

  return tuned(init, draw, options.tune, summary)


def relax(options: Options) -> Estimator:
  r"""RELAX with one control-variate network r_rho(z) per layer, tuned.

  c_phi(z) = f_relaxed(sigma_lambda(z)) + r_rho(z), phi = (log lambda, rho),
  one phi per layer, initialised to REBAR with eta = 1.

  Reference: Grathwohl, Choi, Wu, Roeder & Duvenaud (2018), "Backpropagation
  through the void", ICLR, Alg. 2.
  """
  def init(key, info):
    keys = jax.random.split(key, len(info.layer_shapes))
    return EstimatorState(
        [bernoulli.init_relax_params(k, _size(shape), options.relax_hidden,
                                     options.temperature)
         for k, shape in zip(keys, info.layer_shapes)], ())

  def draw(params, layer_index, family, key, logits, f, f_relaxed, noise):
    return family.relax(key, logits, f, cv_params=params[layer_index],
                        f_relaxed=f_relaxed, noise=noise)

  def summary(params):
    return {"temperature": float(np.mean([np.exp(q.log_temperature)
                                          for q in params]))}

  return tuned(init, draw, options.tune, summary)


def _size(shape: Sequence[int]) -> int:
  return int(np.prod(shape))


def relaxed_objective(options: Options) -> Estimator:
  """Concrete / Gumbel-softmax: the pathwise gradient of the relaxed ELBO."""
  del options
  return Estimator(_empty_init, _pathwise_only, relaxed_objective=True)


def _pathwise_only(state, problem):
  raise ValueError("A relaxed-objective estimator trains the model by the "
                   "pathwise gradient of the relaxed ELBO; it has no "
                   "per-layer estimate.")


def one_layer(estimator: Callable[..., Array], *option_names: str
              ) -> Callable[[Options], Estimator]:
  """The stateless one-layer `estimator`, given the named options."""
  def build(options: Options) -> Estimator:
    return stateless(estimator,
                     **{n: getattr(options, n) for n in option_names})
  return build


def k_samples(estimator: Callable[..., Array]
              ) -> Callable[[Options], Estimator]:
  """A stateless estimator with num_samples = options.loo_samples.

  Leave-one-out REINFORCE (n samples), CARMS (K coupled samples), the
  unordered set estimator (k classes without replacement).
  """
  def build(options: Options) -> Estimator:
    return stateless(estimator, num_samples=options.loo_samples)
  return build


def arms(options: Options) -> Estimator:
  """ARMS over K = options.loo_samples antithetic samples of options.copula."""
  return stateless(bernoulli.arms, num_samples=options.loo_samples,
                   copula=options.copula)


def double_cv(options: Options) -> Estimator:
  r"""Double control variates with alpha shared by all layers, tuned.

  alpha starts at `options.alpha` (0: leave-one-out) and is trained on the
  variance loss, as the authors do; K = options.loo_samples samples.

  Reference: Titsias & Shi (2022), "Double control variates for gradient
  estimation in discrete latent variable models", AISTATS.
  """
  def init(key, info):
    del key, info
    return EstimatorState(jnp.asarray(options.alpha, jnp.float32), ())

  def draw(alpha, layer_index, family, key, logits, f, f_relaxed, noise):
    del layer_index, f_relaxed
    return family.double_cv(key, logits, f, num_samples=options.loo_samples,
                            alpha=alpha, noise=noise)

  def summary(alpha):
    return {"alpha": float(alpha)}

  return tuned(init, draw, options.tune, summary)


def rodeo(options: Options) -> Estimator:
  r"""RODEO with one (alpha, beta, surrogate network) per layer, tuned.

  K = options.loo_samples samples; alpha starts at `options.alpha` and beta
  at 0 (leave-one-out, as the authors start), the surrogate is an MLP
  2 -> `options.rodeo_hidden` -> 2 with LeakyReLU(0.3), all trained on the
  variance loss. Bernoulli layers.

  Reference: Shi, Zhou, Hwang, Titsias & Mackey (2022), "Gradient estimation
  with discrete Stein operators", NeurIPS.
  """
  def init(key, info):
    keys = jax.random.split(key, len(info.layer_shapes))
    return EstimatorState(
        [bernoulli.init_rodeo_params(k, options.rodeo_hidden,
                                     alpha=options.alpha)
         for k in keys], ())

  def draw(params, layer_index, family, key, logits, f, f_relaxed, noise):
    del f_relaxed
    return family.rodeo(key, logits, f, num_samples=options.loo_samples,
                        cv_params=params[layer_index], noise=noise)

  def summary(params):
    return {"alpha": float(np.mean([q.alpha for q in params])),
            "beta": float(np.mean([q.beta for q in params]))}

  return tuned(init, draw, options.tune, summary)


def by_family(parts: dict[str, Estimator]) -> Estimator:
  """Each layer estimated by the estimator of its family; states side by side.

  The state is EstimatorState({family: params}, {family: stats}); each part
  sees only its family's layers (in model order), so a part with one control
  variate per layer (RELAX) gets one per layer of its family. Losses add up.
  """
  if len({p.relaxed_objective for p in parts.values()}) > 1:
    raise ValueError("A fully relaxed objective (Concrete, Gumbel-softmax) "
                     "relaxes every layer: it cannot be combined with "
                     "per-layer estimators.")
  relaxed = next(iter(parts.values())).relaxed_objective

  def init(key, info):
    keys = jax.random.split(key, len(parts))
    states = {}
    for k, (f, part) in zip(keys, parts.items()):
      mine = [i for i, g in enumerate(info.layer_families) if g == f]
      states[f] = part.init(k, info._replace(
          layer_shapes=tuple(info.layer_shapes[i] for i in mine),
          layer_families=(f,) * len(mine)))
    return EstimatorState({f: s.params for f, s in states.items()},
                          {f: s.stats for f, s in states.items()})

  def estimate(state, problem):
    grads: list[Any] = [None] * len(problem.layers)  # all set below
    param_grads, stats, loss = {}, {}, jnp.zeros(())
    for f, part in parts.items():
      mine = [i for i, layer in enumerate(problem.layers)
              if layer.family is FAMILIES[f]]
      out = part.estimate(
          EstimatorState(state.params[f], state.stats[f]),
          problem._replace(layers=[problem.layers[i] for i in mine]))
      for i, g in zip(mine, out.grads):
        grads[i] = g
      param_grads[f], stats[f] = out.param_grads, out.stats
      loss = loss + out.loss
    return Estimate(grads, param_grads, stats, loss)

  def summary(params):
    return {f"{f}/{k}": v for f, part in parts.items()
            for k, v in part.summary(params[f]).items()}

  return Estimator(init, estimate, summary, relaxed)
