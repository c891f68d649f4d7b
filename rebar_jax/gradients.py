r"""Model gradients from one-layer estimators: the composition of both.

For a batch x_1..x_B, a recognition model q_phi(b | x) = prod_l q(b_l | b_{l-1})
and a generative model p_theta(x, b), training maximises the mean ELBO

    L = (1/B) sum_i E_{q(b | x_i)}[F_i(b)],
    F_i(b) = log p(x_i, b) - log q(b | x_i).

Gradients:
  * theta: d/dtheta log p(x_i, b_i) at the sampled chain b_i (pathwise, exact
    given b).
  * phi, layer l: est(key_il, logits_il, f_il) pulled back through the encoder
    of layer l, where logits_il = enc_l(b_{i,l-1}) and f_il(b_l) continues the
    chain from b_l with the downstream noise of the same draw held fixed, then
    returns F_i. Each layer's estimate is unbiased for that layer's gradient.
  * The direct term -d/dphi log q(b | x) of F (score of the sample itself) has
    zero mean and is DROPPED, as in the REBAR/DisARM code.

One learning signal per data point: the estimator is vmapped over the batch with
its own key, logits and f_i, never fed a batch-summed f (500x the variance at
initialisation on the linear SBN).

REBAR/RELAX differentiate their control variate along z, so for them f_il has a
relaxed twin where the downstream layers are relaxed too, sigma((enc(s) +
noise)/lambda) (the "soft" pass of the REBAR code); with one layer it is F on
the relaxed sample.

A pathwise layer (`registry.PATHWISE`: a Gaussian layer's reparameterisation
gradient) differentiates f_l along its sample z, but the discrete layers below
it are step functions of z, so that derivative misses d/dz of their
distribution; their own estimates g^_j are carried back along z
(`_carry_back`), which makes every family order unbiased (tested against
quadrature x enumeration for each order).

The estimator is a `protocol.Estimator` (a pair of pure functions); its own
parameters (REBAR's eta and log lambda, RELAX's networks, NVIL's baseline
network) are trained by a separate optimiser on the loss it reports.

Multi-sample objectives (`multisample`: VIMCO, OVIS, VarGrad, ...) take K whole
chains per data point and differentiate their surrogate loss directly (OVIS-MC
with S more chains that only estimate its control variate). For models whose
layers are all Gaussian, the pathwise IWAE gradient and DReG
(`registry.REPARAMETERISED`) differentiate through reparameterised chains.

The fully relaxed estimators (Concrete, Gumbel-softmax) train the model the way
their papers do: the pathwise gradient of the relaxed ELBO F(s), every layer
relaxed, s = sigma((enc(s_prev) + noise)/lambda) (softmax for categorical),
w.r.t. all parameters, so the decoder is trained on the relaxed samples it is
differentiated through. The reported ELBO is the hard one, same noise.
"""
import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rebar_jax.estimators import continuity
from rebar_jax.estimators import multisample
from rebar_jax.estimators import options as options_lib
from rebar_jax.estimators import protocol
from rebar_jax.estimators import registry
from rebar_jax.models import protocol as models_protocol

Array = jax.Array
PRNGKey = jax.Array
Params = Any

EstimatorState = protocol.EstimatorState
Layer = protocol.Layer


def _model_info(model) -> protocol.ModelInfo:
  layers = model.stochastic_layers()
  return protocol.ModelInfo(
      tuple(tuple(layer.event_shape) for layer in layers), model.data_dim,
      tuple(layer.family for layer in layers))


def layer_families(model) -> tuple[str, ...]:
  """The distinct family names of a model's layers, in the order they occur."""
  return tuple(dict.fromkeys(
      layer.family for layer in model.stochastic_layers()))


class EstimatorSpec(options_lib.Options):
  """An estimator chosen by name, with its fixed options.

  EstimatorSpec(name, families, **options): `name` is a registered estimator
  (`registry.ENTRIES`) applying to every family of the model, or
  "family:name" pairs for a model mixing families
  ("bernoulli:disarm,categorical:arsm"); `families` are the families of the
  model's layers (`layer_families(model)`); the options are those of
  `options.OPTIONS` (each its default unless given). An option the chosen
  estimators do not read must stay at its default, and every option is
  checked against its bounds (`registry.check_options`), so a misplaced
  option is an error rather than silently ignored.

  Immutable and hashable; reads as `spec.name`, `spec.families`,
  `spec.temperature`, ...
  """
  __slots__ = ("name", "families", "entries")
  name: str
  families: tuple[str, ...]
  entries: tuple[registry.Entry, ...]

  def __init__(self, name: str, families: Sequence[str] = ("bernoulli",),
               **options: Any):
    super().__init__(**options)
    families = tuple(families)
    object.__setattr__(self, "name", name)
    object.__setattr__(self, "families", families)
    unknown = set(families) - set(registry.FAMILIES)
    if unknown or not families:
      raise ValueError(f"Unknown families {sorted(unknown)}; choose from "
                       f"{sorted(registry.FAMILIES)}.")
    if ":" in name:
      parts = tuple(registry.names_by_family(name, families).values())
    else:
      parts = (name,)
    object.__setattr__(self, "entries", tuple(
        registry.get(n) for n in dict.fromkeys(parts)))
    self._check()
    registry.check_options(self.entries, self.values())

  def _key(self) -> tuple[Any, ...]:
    return (self.name, self.families) + super()._key()

  def __repr__(self) -> str:
    changed = "".join(f", {k}={v!r}" for k, v in self.values().items()
                      if v != options_lib.OPTIONS[k].default)
    return f"EstimatorSpec({self.name!r}, {self.families!r}{changed})"

  @property
  def entry(self) -> registry.Entry:
    """The registry entry of a one-name spec (every spec but family pairs)."""
    return self.entries[0]

  def renyi_alpha_at(self, step) -> Any:
    """alpha at `step` (an int or a traced step; None: step 0)."""
    if not self.renyi_warmup_steps or step is None:
      return self.renyi_alpha
    left = 1.0 - jnp.asarray(step, jnp.float32) / self.renyi_warmup_steps
    return self.renyi_alpha * jnp.clip(left, 0.0, 1.0)

  @property
  def is_multisample(self) -> bool:
    """K-sample objective on K chains per data point (score, pathwise or
    local)."""
    return self.entry.is_multisample

  @property
  def is_reparameterised(self) -> bool:
    """A pathwise K-sample gradient (`registry.REPARAMETERISED`)."""
    return self.entry.kind == registry.REPARAMETERISED

  def layers_in(self, model, capability: str) -> tuple[bool, ...]:
    """Per layer of `model`: has its estimator `capability` (a
    `registry` capability: PATHWISE, RELAXED)? False for every layer of a
    multi-sample objective."""
    if self.is_multisample:
      return tuple(False for _ in model.stochastic_layers())
    names = registry.names_by_family(self.name, self.families)
    return tuple(registry.get(names[layer.family]).has(capability)
                 for layer in model.stochastic_layers())

  @property
  def estimator(self) -> protocol.Estimator:
    """The training estimator (not for multi-sample objectives)."""
    return registry.for_layers(self.name, self.families, self)

  def _check(self) -> None:
    """What the options cannot say alone: the kinds and families fit."""
    entry = self.entry
    if entry.is_multisample:
      lacking = [f for f in self.families if f not in entry.families]
      if lacking:
        raise ValueError(
            f"{self.name!r} applies to {sorted(entry.families)} layers, the "
            f"model's are {list(self.families)}; choose a multi-sample "
            f"objective {sorted(registry.names(kind=registry.MULTISAMPLE))}.")
      if self.iw_samples < 2:
        raise ValueError(
            f"{self.name!r} is a multi-sample objective: set iw_samples "
            "(K) >= 2, e.g. --config.iw_samples=10.")
      if entry.has(registry.NEEDS_AUX) and self.aux_samples < 1:
        raise ValueError(
            f"aux_samples (S) = {self.aux_samples}: {self.name!r} draws "
            "auxiliary samples and needs S >= 1, e.g. --config.aux_samples=5.")
      return
    names = registry.names_by_family(self.name, self.families)
    for family, name in names.items():  # each registered for its family
      if name not in registry.names(family=family, kind=registry.LAYER):
        registry.build(name, family)  # the ValueError naming the choices
    pathwise = [f for f, n in names.items()
                if registry.get(n).has(registry.PATHWISE)]
    rescaled = sorted({n for n in names.values()
                       if registry.get(n).has(registry.RESCALED)})
    if pathwise and rescaled:
      raise ValueError(
          f"{rescaled} rescale their layers' estimates by a running variance, "
          f"which the reparameterised {pathwise} layers carry back into their "
          "own unscaled gradients (a biased mix); use a score-function "
          f"estimator for the {pathwise} layers, or a discrete estimator "
          "without that normalisation.")
    _ = self.estimator  # builds the composition: its parts must combine

  def summary(self, params) -> dict[str, float]:
    """The tuned scalars worth watching (host values of state.params)."""
    return {} if self.is_multisample else self.estimator.summary(params)

  def init(self, key: PRNGKey, model) -> EstimatorState:
    """The initial EstimatorState for `model`."""
    if self.is_multisample:
      return EstimatorState((), ())
    return self.estimator.init(key, _model_info(model))


def _signal(model, params, x, bs):
  """F(b) = log p(x, b) - log q(b | x)."""
  log_p, log_q = model.apply(params, x, bs, method="log_joint")
  return log_p - log_q


class ChainNoise(NamedTuple):
  """The randomness of one step's chains (`chain_noise`).

  keys: (B, L) keys, one per data point and layer, from which the layer's
    estimator draws (its sample's noise is `noise`, any more from the key).
  noise: per layer l, (B, *event_l) the family's noise of keys[:, l].
  """
  keys: Array
  noise: tuple[Array, ...]


def chain_noise(model, batch: int, key: PRNGKey) -> ChainNoise:
  """The noise of a batch's chains: per data point and layer, a key and the
  family's `noise` of that key, the noise its estimators draw from it, so
  their b_l is the chain's b_l.

  A pure function of `key`: a trainer may draw it for many steps at once
  (vmapped over their keys, outside its loop) and hand each step its slice
  (`model_gradients(..., noise=)`), with the same values.
  """
  layers = model.stochastic_layers()
  num_layers = len(layers)
  keys = jax.random.split(key, batch * num_layers).reshape(
      (batch, num_layers) + key.shape)
  noise = tuple(
      jax.vmap(lambda k, fam=fam, layer=layer: fam.noise(
          k, tuple(layer.event_shape)))(keys[:, l])
      for l, (fam, layer) in enumerate(zip(models_protocol.families(model),
                                           layers)))
  return ChainNoise(keys, noise)


def _layers(model, params: Params, x: Array, key: PRNGKey,
            with_log_q: bool = False, noise: ChainNoise | None = None):
  """The hard chain b_l = sample(logits_l(x, b_<l), noise_l), one Layer each.

  Returns log p(x, b) (B,), log q(b | x) (B,), the vjp of (logits, log p)
  w.r.t. params (of (logits, log p, log q) with `with_log_q`: the gradient
  of log q at the fixed samples, which the ELBO's estimators need not), and
  the layers' estimation problems: f of layer l keeps the layers above as
  sampled and continues the chain below from b_l with the same noise (hard,
  or relaxed at the given temperature for f_soft).
  """
  families = models_protocol.families(model)
  keys, noises = noise or chain_noise(model, x.shape[0], key)
  logits_of = lambda p, l, x, above: model.apply(
      p, l, x, tuple(above), method="layer_logits")

  def forward(p):
    logits: list[Array] = []
    bs: list[Array] = []
    for l, fam in enumerate(families):
      lg = logits_of(p, l, x, bs)  # gradients reach the encoder via the vjp
      bs.append(fam.sample_from_noise(jax.lax.stop_gradient(lg), noises[l]))
      logits.append(lg)
    log_p, log_q = model.apply(p, x, tuple(bs), method="log_joint")
    if with_log_q:
      return (tuple(logits), log_p, log_q), tuple(bs)
    return (tuple(logits), log_p), tuple(bs)

  outputs, vjp_fn, bs = jax.vjp(forward, params, has_aux=True)
  logits, log_p = outputs[:2]
  log_q = (outputs[2] if with_log_q else
           model.apply(params, x, bs, method="log_joint")[1])

  def continuation(layer, b_l, ctx, temperature=None):
    """b_1..b_L and the logits of layers layer+1..: the layers above as
    sampled, then the chain continued from b_l with its noise."""
    x_i, above, after = ctx
    out, logits = list(above) + [b_l], []
    for k, nz in zip(range(layer + 1, len(families)), after):
      lg = logits_of(params, k, x_i, out)
      logits.append(lg)
      out.append(families[k].sample_from_noise(lg, nz) if temperature is None
                 else families[k].relaxed_from_noise(lg, nz, temperature))
    return tuple(out), logits

  def chain(layer, b_l, ctx, temperature=None):
    """F at b_1..b_L: the layers above as sampled, then layer+1.. from b_l."""
    return _signal(model, params, ctx[0],
                   continuation(layer, b_l, ctx, temperature)[0])

  layers = [
      Layer(keys[:, l], logits[l],
            functools.partial(lambda l, b, ctx: chain(l, b, ctx), l),
            functools.partial(lambda l, s, t, ctx: chain(l, s, ctx, t), l),
            (x, bs[:l], noises[l + 1:]), bs[l], fam, noises[l])
      for l, fam in enumerate(families)]
  return log_p, log_q, vjp_fn, layers, continuation


def _carry_back(pathwise: Sequence[bool], layers: Sequence[Layer],
                grads: Sequence[Array], continuation) -> list[Array]:
  r"""Adds, to each pathwise layer, the discrete layers' estimates below it.

  A pathwise estimate of layer l differentiates f_l(z) = F(chain continued
  from z) along z = z(params_l, eps_l); a discrete layer j > l in that
  continuation is a step function of z, so the derivative misses

      d/dz E[F | z] - E[dF/dz | b_j fixed]
          = sum_j (d/dl_j E_{b_j}[f_j]) . dl_j(z)/dz,

  l_j(z) the logits of layer j in the continuation (differentiable paths
  only: through Gaussian samples, not discrete ones). With g^_j the layer's
  own estimate, unbiased for d/dl_j E[f_j] given the layers above,

      g^_l += d/dparams_l sum_j g^_j . l_j(z(params_l, eps_l)),

  an unbiased estimate of the missing term, since l_j(z) depends only on the
  layers above j.
  """
  out = list(grads)
  for l, layer in enumerate(layers):
    below = [j for j in range(l + 1, len(layers))
             if not layers[j].family.REPARAMETERISABLE]
    if not pathwise[l] or not below:
      continue
    cotangents = tuple(jax.lax.stop_gradient(grads[j]) for j in below)

    def carried(logits, ctx, noise, cot, l=l, layer=layer, below=below):
      z = layer.family.sample_from_noise(logits, noise)
      lower = continuation(l, z, ctx)[1]
      return sum(jnp.vdot(c, lower[j - l - 1]) for c, j in zip(cot, below))

    out[l] = out[l] + jax.vmap(jax.grad(carried))(
        layer.logits, layer.ctx, layer.noise, cotangents)
  return out


def relaxed_signal_jump(model, spec: EstimatorSpec, params: Params, x: Array,
                        key: PRNGKey) -> continuity.Jump | None:
  """The largest jump of the relaxed learning signal, or None if not relaxed.

  For every layer whose estimator evaluates f on relaxed samples
  (`registry.RELAXED`: REBAR, RELAX, Concrete, Gumbel-softmax), the relaxed
  signal f_soft of that layer (the chain continued relaxed from s, as REBAR's
  control variate sees it) is probed between pairs of relaxed samples for each
  data point of x (`continuity.find_jump`); returns the worst relative jump.
  """
  relaxed = [l for l, yes in enumerate(spec.layers_in(model, registry.RELAXED))
             if yes]
  if not relaxed:
    return None

  def probe(params, x, key):
    layers = _layers(model, params, x, key)[3]
    def jump(layer):
      return jax.vmap(lambda k, lg, ctx: continuity.largest_jump(
          k, lg, lambda s: layer.f_soft(s, spec.temperature, ctx),
          layer.family, spec.temperature, num_segments=8))(
              layer.keys, layer.logits, layer.ctx)
    return [jump(layers[l]) for l in relaxed]

  jumps = jax.device_get(jax.jit(probe)(params, x, key))
  j = max(jumps, key=lambda j: float(np.max(j.size / j.scale)))
  i = int(np.argmax(j.size / j.scale))
  return continuity.Jump(j.size[i], j.scale[i], j.at[i])


def _relaxed_gradients(model, spec, params, est_state, x, key, noise):
  """Pathwise gradient of the relaxed ELBO; the hard ELBO with the same noise.

  The noise is the chain noise of `_layers`, every layer relaxed at
  spec.temperature (Concrete / Gumbel-softmax).
  """
  families = models_protocol.families(model)
  _, noises = noise or chain_noise(model, x.shape[0], key)

  def signal(p, hard):
    bs: list[Array] = []
    for l, fam in enumerate(families):
      lg = model.apply(p, l, x, tuple(bs), method="layer_logits")
      bs.append(fam.sample_from_noise(lg, noises[l]) if hard else
                fam.relaxed_from_noise(lg, noises[l], spec.temperature))
    return _signal(model, p, x, tuple(bs))

  grads = jax.grad(lambda p: -jnp.mean(signal(p, hard=False)))(params)
  metrics = {"elbo": jnp.mean(signal(params, hard=True)),
             "estimator_loss": jnp.zeros(())}
  return grads, jax.tree.map(jnp.zeros_like, est_state.params), \
      est_state.stats, metrics


def model_gradients(model, spec: EstimatorSpec, params: Params,
                    est_state: EstimatorState, x: Array, key: PRNGKey,
                    step: Any = None, noise: ChainNoise | None = None
                    ) -> tuple[Params, Any, Any, dict[str, Array]]:
  """Gradients of the negative mean ELBO and of the estimator's own loss.

  Args:
    model: a model following `rebar_jax.models.protocol` (SBN,
      CategoricalVAE, or a user's, whose layers may mix families).
    spec: which estimator, with its options, for the model's families.
    params: model variables.
    est_state: the estimator's learned state.
    x: (B, D) binary batch.
    key: one key for this step.
    step: the training step (may be traced), for schedules (the Renyi
      warm-up); None is step 0.
    noise: `chain_noise(model, B, key)` when the caller drew it already
      (for many steps at once); the same values, so the same gradients.
      Single-sample estimators only (K-sample objectives draw from key).

  Returns:
    (model_grads, estimator_param_grads, new_estimator_stats, metrics): the
    gradients are of losses to MINIMISE, -ELBO for the model, the variance
    loss (NVIL: the baseline's squared error) for the estimator parameters;
    metrics hold the batch-mean ELBO of the sampled chain and that loss.
  """
  models_protocol.check(model, jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)),
      params), batch=x.shape[0] if x.shape[0] > 1 else 3)
  if set(layer_families(model)) != set(spec.families):
    raise ValueError(
        f"The estimator was built for {list(spec.families)} layers; "
        f"{type(model).__name__}'s layers are {list(layer_families(model))}: "
        "build the EstimatorSpec with families=layer_families(model).")
  if spec.is_multisample:
    if noise is not None:
      raise ValueError("noise= is for single-sample estimators; a K-sample "
                       "objective draws its chains from key.")
    return _multisample_gradients(model, spec, params, est_state, x, key,
                                  step)
  estimator = spec.estimator
  if estimator.relaxed_objective:
    return _relaxed_gradients(model, spec, params, est_state, x, key, noise)
  log_p, log_q, vjp_fn, layers, continuation = _layers(model, params, x, key,
                                                       noise=noise)
  batch = x.shape[0]
  elbo = log_p - log_q  # (B,), the sampled chain's ELBO
  out = estimator.estimate(est_state, protocol.Problem(
      layers, jax.lax.stop_gradient(elbo), x - _mean(model)))
  grads = _carry_back(spec.layers_in(model, registry.PATHWISE), layers,
                      out.grads, continuation)
  # In the logits' dtype, as every one-layer estimator returns it: a model
  # computing in float16/bfloat16 gets estimates computed in float32 (the
  # samples are float32), rounded once (`_checks.float32_inside`).
  grads = [g.astype(layer.logits.dtype) for g, layer in zip(grads, layers)]
  (model_grads,) = vjp_fn((tuple(-e / batch for e in grads),
                           -jnp.ones_like(log_p) / batch))
  metrics = {"elbo": jnp.mean(elbo), "estimator_loss": out.loss}
  return model_grads, out.param_grads, out.stats, metrics


def _multisample_gradients(model, spec, params, est_state, x, key, step):
  r"""Gradients of a K-sample surrogate (1/B) sum_i surrogate(log w_i, log q_i).

  For each data point, K independent hard chains b_k ~ q(b | x) (the samples
  carry no gradient); log w_k = log p(x, b_k) - log q(b_k | x) and log q_k are
  differentiated w.r.t. all parameters, and the surrogate's gradient is the
  estimator (`multisample`: VIMCO, OVIS-gamma, REINFORCE-LOO, VarGrad, RWS).
  """
  if spec.is_reparameterised:
    return _reparameterised_gradients(model, spec, params, est_state, x, key,
                                      step)
  if spec.entry.kind == registry.LOCAL:
    return _local_gradients(model, spec, params, est_state, x, key)
  surrogate = _objective(spec, step)
  num = spec.iw_samples + spec.aux_samples
  keys = jax.random.split(key, x.shape[0] * num).reshape(
      (x.shape[0], num) + key.shape)

  def loss(p):
    def chain(x_i, k):
      b = models_protocol.sample(model, p, x_i, k)
      log_p, log_q = model.apply(p, x_i, b, method="log_joint")
      return log_p - log_q, log_q

    log_w, log_q = jax.vmap(jax.vmap(chain, in_axes=(None, 0)))(x, keys)
    log_w, log_w_aux = log_w[:, :spec.iw_samples], log_w[:, spec.iw_samples:]
    log_q = log_q[:, :spec.iw_samples]
    if spec.aux_samples:  # OVIS-MC: the last S chains estimate c_k only
      losses = jax.vmap(surrogate)(log_w, log_q, log_w_aux)
    else:
      losses = jax.vmap(surrogate)(log_w, log_q)
    iw = jax.vmap(multisample.iw_bound)(log_w)
    return jnp.mean(losses), (jnp.mean(log_w), jnp.mean(iw))

  (_, (elbo, iw)), grads = jax.value_and_grad(loss, has_aux=True)(params)
  metrics = {"elbo": elbo, "estimator_loss": jnp.zeros(()), "iw_bound": iw}
  return grads, (), est_state.stats, metrics


def _local_gradients(model, spec, params, est_state, x, key):
  r"""Gradients of -L_K with local learning signals (`registry.LOCAL`).

  The K chains of data point i are rows i K .. i K + K - 1 of a batch of
  B K chains (`_layers`); layer l of chain k gets the one-layer estimate of
  d/dl E[f_ikl], f_ikl(b) = L_K with chain k's log-weight continued from b
  and the others as sampled; the pathwise part is sum_k v_ik
  (d log p(x_i, b_ik) - d log q(b_ik | x_i)) at the fixed samples, v the
  normalised weights.
  """
  k = spec.iw_samples
  batch = x.shape[0]
  rows = jnp.repeat(x, k, axis=0)                                 # (B K, D)
  log_p, log_q, vjp_fn, layers, _ = _layers(model, params, rows, key,
                                            with_log_q=True)
  log_w = jax.lax.stop_gradient(log_p - log_q).reshape(batch, k)
  row_log_w = jnp.repeat(log_w, k, axis=0)     # (B K, K): its data point's
  chain = jnp.tile(jnp.arange(k), batch)       # (B K,): which of them it is
  one_layer = spec.entry.objective  # the one-layer estimator's name

  def local(layer):
    def f_hard(b, ctx):
      inner, log_w_i, k_i = ctx
      return multisample.iw_bound(log_w_i.at[k_i].set(layer.f_hard(b, inner)))
    est = getattr(layer.family, one_layer)
    return protocol.per_data_point(
        layer._replace(f_hard=f_hard, ctx=(layer.ctx, row_log_w, chain)),
        lambda kk, lg, f, fr, nz: est(kk, lg, f, noise=nz))

  grads = [local(layer) for layer in layers]
  v = jax.nn.softmax(log_w, axis=-1).reshape(-1)                  # (B K,)
  (model_grads,) = vjp_fn((tuple(-g / batch for g in grads), -v / batch,
                           v / batch))
  iw = jax.vmap(multisample.iw_bound)(log_w)
  metrics = {"elbo": jnp.mean(log_w), "estimator_loss": jnp.zeros(()),
             "iw_bound": jnp.mean(iw)}
  return model_grads, (), est_state.stats, metrics


def _reparameterised_gradients(model, spec, params, est_state, x, key, step):
  r"""The pathwise IWAE gradient or DReG on K reparameterised chains.

  z_k = z(params, eps_k) from `models.protocol.reparameterised_sample` (the
  draws of `sample` on the same keys). iwae_pathwise differentiates
  L_K(log w(z(params))) through everything; DReG takes log_w_theta from the
  model at the fixed samples and log_w_phi from the stop-gradiented model at
  the live samples (`multisample.dreg_surrogate`).
  """
  keys = jax.random.split(key, x.shape[0] * spec.iw_samples).reshape(
      (x.shape[0], spec.iw_samples) + key.shape)
  sg = jax.lax.stop_gradient
  surrogate = _objective(spec, step)

  def loss(p):
    def chain(x_i, k):
      z = models_protocol.reparameterised_sample(model, p, x_i, k)
      log_p, log_q = model.apply(p, x_i, z, method="log_joint")
      log_p_theta, log_q_fixed = model.apply(p, x_i, sg(z), method="log_joint")
      log_p_z, log_q_z = model.apply(sg(p), x_i, z, method="log_joint")
      return multisample.LogWeightViews(
          log_p - log_q, log_p_theta - sg(log_q_fixed), log_p_z - log_q_z)

    views = jax.vmap(jax.vmap(chain, in_axes=(None, 0)))(x, keys)
    losses = jax.vmap(surrogate)(views)
    iw = jax.vmap(multisample.iw_bound)(views.log_w)
    return jnp.mean(losses), (jnp.mean(views.log_w), jnp.mean(iw))

  (_, (elbo, iw)), grads = jax.value_and_grad(loss, has_aux=True)(params)
  metrics = {"elbo": elbo, "estimator_loss": jnp.zeros(()), "iw_bound": iw}
  return grads, (), est_state.stats, metrics


def _objective(spec: EstimatorSpec, step):
  """The spec's K-sample surrogate with its options bound (at `step`)."""
  return registry.objective(
      spec.entry,
      alpha=spec.renyi_alpha_at(step) if spec.renyi_alpha else 0.0,
      tvo_partitions=spec.tvo_partitions, tvo_beta_min=spec.tvo_beta_min)


def estimation_problem(model, params: Params, x: Array, key: PRNGKey
                       ) -> protocol.Problem:
  """What a training estimator is given for batch x (`protocol.Problem`):
  each layer's estimation problem on the hard chain sampled from `key`, the
  chain's signal F = log p(x, b) - log q(b | x) (B,), no gradient, and the
  baseline inputs x minus the model's training mean."""
  log_p, log_q, _, layers, _ = _layers(model, params, x, key)
  return protocol.Problem(layers, jax.lax.stop_gradient(log_p - log_q),
                          x - _mean(model))


def _mean(model):
  mean = getattr(model, "train_mean", None)
  return (np.zeros(model.data_dim, np.float32) if mean is None
          else np.asarray(mean, np.float32))
