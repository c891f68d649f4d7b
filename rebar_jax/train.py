r"""Training discrete-latent VAEs with any estimator: `train_and_evaluate`.

    python -m rebar_jax.train --config=configs/sbn_mnist.py --workdir=runs/sbn
    python -m rebar_jax.train --config=configs/sbn_mnist.py \
        --config.estimator=disarm --config.num_steps=20000

One pure train step `(state, x, step) -> (state, metrics)`: the estimator's
gradients (`rebar_jax.gradients`) feed an optax optimiser for the model and a
separate optax optimiser for the estimator's own parameters (REBAR's eta and
lambda, RELAX's networks, NVIL's baseline), trained to minimise the estimator's
variance as in the REBAR/RELAX papers. `config.steps_per_call` steps run inside
one jitted `lax.scan` with the state donated; the host only sees each chunk's
metrics. Keys: one root key from `config.seed`, split(fold_in(root, step)) for
each step (computed for a whole chunk at once), so a resumed run draws exactly
the noise of an uninterrupted one.
Minibatches are the rows of a per-epoch permutation drawn on the host from
(seed, epoch), also a function of the step alone.

Outputs in `workdir`: checkpoints/ (orbax, each verified by a digest),
run.json (the run's identity: config, data fingerprint, history), config.json,
metrics.jsonl, metrics.csv, tensorboard/ event files, curves.png, and the final
evaluation in final_metrics.json.

What a run guarantees (README, "Runs and failures"):
  * Exact resume: rerunning the same command continues from the newest intact
    checkpoint and gives the numbers of an uninterrupted run (on the same
    software: run.json records the versions, a resume under others warns).
  * One run per workdir: resuming with a configuration (or data) that differs
    in anything that changes results is refused before anything is written,
    listing the fields (`--allow_config_change` continues and records the
    change in run.json); a workdir with no checkpoint yet takes any config;
    a second process on the same workdir is refused (an OS lock on the
    workdir directory).
  * Integrity: a damaged checkpoint is reported, moved aside and never
    restored; the run falls back to the newest intact one.
  * SIGINT / SIGTERM / SIGHUP finish the current chunk, save a checkpoint,
    flush the metrics and TensorBoard and exit with one line saying how to
    resume (a second SIGINT exits at once, with the same line).
  * Bad input and faults are one line naming the fix, before anything is
    written where the input is at fault (config, data, model), and for a
    full or read-only disk or a deleted workdir.
  * A non-finite ELBO or gradient, or a training ELBO more than
    `config.divergence_threshold` nats below its value at initialisation,
    stops the run with the step, the estimator and the last checkpoint.
"""
import dataclasses
import errno
import hashlib
import importlib
import importlib.util
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, NamedTuple, Optional

from absl import app
from absl import flags
from absl import logging
import chex
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax
from tqdm import tqdm

from rebar_jax import data as data_lib
from rebar_jax import diagnostics
from rebar_jax import gradients
from rebar_jax import objectives
from rebar_jax import parallel
from rebar_jax.estimators import continuity
from rebar_jax.models import categorical_vae as cat_lib
from rebar_jax.models import gaussian as gaussian_lib
from rebar_jax.models import protocol as models_protocol
from rebar_jax.models import sbn as sbn_lib
from rebar_jax.utils import checkpoints
from rebar_jax.utils import plots
from rebar_jax.utils import runs
from rebar_jax.utils import writers

Array = jax.Array
Params = Any


# The training ELBO of the last RECENT steps is kept in the state, so the
# reported `train_elbo_last_1000_steps` comes from the checkpoint, exactly,
# whatever happens to metrics.jsonl.
RECENT = 1000


class Monitor(NamedTuple):
  """Training ELBOs the run's guards and final metrics read, in the state.

  initial_elbo: the batch ELBO of step 0 (at initialisation).
  recent_elbo: (RECENT,), the batch ELBO of step s at index s % RECENT.
  """
  initial_elbo: Array
  recent_elbo: Array


class TrainState(NamedTuple):
  """Everything a run needs to continue exactly: a pytree of arrays."""
  step: Array
  params: Params
  opt_state: optax.OptState
  estimator: gradients.EstimatorState
  estimator_opt_state: optax.OptState
  monitor: Monitor


class ConfigError(ValueError):
  """A configuration value that cannot be used; the message names the field."""


class TrainingStopped(FloatingPointError):
  """A non-finite or diverged training run; the last checkpoint is kept."""


class Interrupted(Exception):
  """SIGINT, SIGTERM or SIGHUP stopped the run after saving a checkpoint."""

  def __init__(self, signum: int, step: int, workdir: str):
    self.signum, self.step = signum, step
    super().__init__(
        f"Stopped by {signal.Signals(signum).name} at step {step}; the "
        f"checkpoint is saved in {workdir}/checkpoints. Run the same command "
        "to resume.")


@dataclasses.dataclass(frozen=True)
class Experiment:
  """The pieces built from a config: data, model, estimator, optimisers."""
  dataset: data_lib.Dataset
  model: Any  # follows rebar_jax.models.protocol (SBN, CategoricalVAE, ...)
  spec: gradients.EstimatorSpec
  optimizer: optax.GradientTransformation
  estimator_optimizer: optax.GradientTransformation


# Config fields and the values they accept (the model and estimator fields are
# checked by the model and `gradients.EstimatorSpec`).
_INTS = {  # name: minimum
    "seed": 0, "eval_seed": 0, "eval_max_examples": 0, "diagnostic_draws": 0,
    "batch_size": 1, "num_steps": 1, "steps_per_call": 1, "eval_every": 1,
    "checkpoint_every": 1, "eval_num_samples": 1, "eval_batch_size": 1,
    "iw_samples": 1, "aux_samples": 0, "loo_samples": 1, "num_devices": 0,
    "renyi_warmup_steps": 0, "tvo_partitions": 1,
}
_POSITIVE_FLOATS = ("learning_rate", "estimator_learning_rate", "temperature")
_FINITE_FLOATS = ("eta", "alpha")
_MODEL_INTS = {"sbn": {"num_layers": 1, "num_latents": 1, "hidden": 1},
               "categorical_vae": {"num_vars": 1, "num_classes": 2},
               "gaussian_vae": {"num_latents": 1}}
_MODEL_SIZES = {"sbn": (), "categorical_vae": ("mlp_hidden",),
                "gaussian_vae": ("mlp_hidden",)}
_MAX_SEED = 2**32 - 1


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError, naming the field, for any value that cannot work."""
  def fail(name, expected):
    raise ConfigError(f"config.{name} must be {expected}, got "
                      f"{config[name]!r}.")

  model_factory(config.model)  # raises ConfigError naming the fix
  for name, choices in (("dataset", data_lib.DATASETS),
                        ("data_source", data_lib.SOURCES)):
    if config[name] not in choices:
      fail(name, f"one of {list(choices)}")
  _check_estimator_name(config.estimator)
  ints = dict(_INTS, **_MODEL_INTS.get(config.model, {}))
  for name, minimum in ints.items():
    if not _is_int(config[name]) or config[name] < minimum:
      fail(name, f"an integer >= {minimum}")
  for name in ("seed", "eval_seed"):
    if config[name] > _MAX_SEED:
      fail(name, f"an integer in [0, {_MAX_SEED}]")
  for name in _POSITIVE_FLOATS:
    if not (math.isfinite(float(config[name])) and float(config[name]) > 0):
      fail(name, "a finite number > 0")
  for name in _FINITE_FLOATS:
    if not math.isfinite(float(config[name])):
      fail(name, "a finite number")
  if not float(config.divergence_threshold) > 0:
    fail("divergence_threshold", "> 0 (nats; inf turns the guard off)")
  for name in ("relax_hidden",) + _MODEL_SIZES.get(config.model, ()):
    if not all(_is_int(h) and h >= 1 for h in config[name]):
      fail(name, "a tuple of integers >= 1")
  if config.model == "sbn" and config.activation not in sbn_lib.ACTIVATIONS:
    fail("activation", f"one of {sorted(sbn_lib.ACTIVATIONS)}")
  for name in ("eval_every", "checkpoint_every"):
    if config[name] % config.steps_per_call:
      raise ConfigError(
          f"config.{name}={config[name]} must be a multiple of "
          f"config.steps_per_call={config.steps_per_call}.")


def _check_estimator_name(name: Any) -> None:
  """config.estimator is a non-empty name (its parts are checked by
  `gradients.EstimatorSpec`: each family named once)."""
  if not isinstance(name, str) or not name.strip():
    raise ConfigError(f"config.estimator must be an estimator's name, got "
                      f"{name!r}.")


def _sbn(config: ml_collections.ConfigDict, dataset: data_lib.Dataset):
  return sbn_lib.SBN(
      num_layers=config.num_layers, num_latents=config.num_latents,
      nonlinear=config.nonlinear, hidden=config.hidden,
      data_dim=dataset.data_dim, train_mean=dataset.train_mean,
      activation=config.activation)


def _categorical_vae(config: ml_collections.ConfigDict,
                     dataset: data_lib.Dataset):
  return cat_lib.CategoricalVAE(
      num_vars=config.num_vars, num_classes=config.num_classes,
      hidden=tuple(config.mlp_hidden), data_dim=dataset.data_dim,
      learned_prior=config.learned_prior, train_mean=dataset.train_mean)


def _gaussian_vae(config: ml_collections.ConfigDict,
                  dataset: data_lib.Dataset):
  return gaussian_lib.GaussianVAE(
      latent_dim=config.num_latents, hidden=tuple(config.mlp_hidden),
      data_dim=dataset.data_dim, train_mean=dataset.train_mean)


# config.model -> factory(config, dataset) -> a module following
# rebar_jax.models.protocol. Any other value is an import path of a user's
# factory (`model_factory`).
MODELS = {"sbn": _sbn, "categorical_vae": _categorical_vae,
          "gaussian_vae": _gaussian_vae}


def model_factory(name: str):
  """The factory named by config.model: a key of MODELS or an import path.

  An import path is "path/to/file.py:factory" (relative to the current
  directory) or "package.module:factory"; the factory is called as
  factory(config, dataset) and returns a Flax module following
  `rebar_jax.models.protocol` (see examples/custom_model.py).
  """
  if name in MODELS:
    return MODELS[name]
  if not isinstance(name, str) or name.count(":") != 1:
    raise ConfigError(
        f"config.model must be one of {sorted(MODELS)} or the import path "
        "of your model's factory, 'path/to/file.py:factory' or "
        f"'package.module:factory'; got {name!r}.")
  where, attr = name.split(":")
  try:
    if where.endswith(".py"):
      path = os.path.abspath(where)
      if not os.path.isfile(path):
        raise ConfigError(f"config.model={name!r}: no file {path}.")
      module_name = "rebar_jax_user_model_" + hashlib.sha256(
          path.encode()).hexdigest()[:12]
      module = sys.modules.get(module_name)
      if module is None:
        loader = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader)
        sys.modules[module_name] = module
        loader.loader.exec_module(module)
    else:
      module = importlib.import_module(where)
  except ImportError as e:
    raise ConfigError(f"config.model={name!r}: cannot import {where!r} "
                      f"({e}).") from e
  if not callable(getattr(module, attr, None)):
    raise ConfigError(f"config.model={name!r}: {where} has no callable "
                      f"{attr!r}.")
  return getattr(module, attr)


_PROTOCOL = ("stochastic_layers", "layer_logits", "log_joint", "data_dim",
             "train_mean")


def load_data(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  """The config's data set (`config.data_dir` checked to be a directory)."""
  if config.data_dir and os.path.exists(config.data_dir) and not (
      os.path.isdir(config.data_dir)):
    raise ConfigError(f"config.data_dir={config.data_dir!r} is a file; give "
                      "the directory that holds the data files.")
  return data_lib.load_dataset(
      config.dataset, config.data_source, config.data_dir or None,
      seed=config.seed)


def build(config: ml_collections.ConfigDict,
          dataset: Optional[data_lib.Dataset] = None) -> Experiment:
  """Data, model, estimator and optimisers from a config (validated).

  `dataset`: the config's data, already loaded (`load_data`), e.g. to check
  many configs on the same data.

  Raises:
    ConfigError: a config value that cannot work (the message names it).
    rebar_jax.data.DataError, FileNotFoundError, ImportError, RuntimeError:
      the data set cannot be loaded (the message says how to provide it).
  """
  check_config(config)
  if dataset is None:
    dataset = load_data(config)
  num_train = dataset.train.shape[0]
  if config.batch_size > num_train:
    raise ConfigError(
        f"config.batch_size={config.batch_size} exceeds the {num_train} "
        f"training examples of {config.dataset} ({config.data_source}); "
        f"choose at most {num_train}.")
  factory = model_factory(config.model)
  try:
    model = factory(config, dataset)
  except TypeError as e:
    if config.model in MODELS:
      raise
    raise ConfigError(
        f"config.model={config.model!r}: calling it as factory(config, "
        f"dataset) failed ({e}); it must take those two arguments and return "
        "a Flax module following rebar_jax/models/protocol.py.") from e
  missing = [a for a in _PROTOCOL if not hasattr(model, a)]
  if missing:
    raise ConfigError(
        f"config.model={config.model!r} made a {type(model).__name__}, "
        f"which lacks {missing} of the model protocol "
        "(rebar_jax/models/protocol.py).")
  if model.data_dim != dataset.data_dim:
    raise ConfigError(
        f"config.model={config.model!r} made a model of data_dim="
        f"{model.data_dim}, but {config.dataset} has {dataset.data_dim} "
        "values per example; build the model with dataset.data_dim.")
  try:
    models_protocol.check(model)  # shapes and dtypes; latent layers exist
  except models_protocol.ModelError as e:
    raise ConfigError(f"config.model={config.model!r}: {e}") from e
  try:
    spec = gradients.EstimatorSpec(
        name=config.estimator, families=gradients.layer_families(model),
        temperature=config.temperature, eta=config.eta,
        loo_samples=config.loo_samples, copula=config.copula,
        alpha=config.alpha,
        tune=config.tune_estimator,
        relax_hidden=tuple(config.relax_hidden),
        iw_samples=config.iw_samples, aux_samples=config.aux_samples,
        renyi_alpha=float(config.renyi_alpha),
        renyi_warmup_steps=config.renyi_warmup_steps,
        tvo_partitions=config.tvo_partitions,
        tvo_beta_min=float(config.tvo_beta_min))
  except ValueError as e:
    raise ConfigError(f"config.estimator={config.estimator!r}: {e}") from e
  if config.model not in MODELS:  # the library's models are continuous
    _check_relaxed_signal(config, dataset, model, spec)
  if not spec.is_multisample and config.iw_samples != 1:
    raise ConfigError(
        f"config.iw_samples={config.iw_samples}, but "
        f"config.estimator={config.estimator!r} draws one sample per data "
        "point and would ignore it; set iw_samples=1, or choose a "
        "multi-sample objective (e.g. vimco_arithmetic, ovis_gamma0).")
  return Experiment(dataset, model, spec, optax.adam(config.learning_rate),
                    optax.adam(config.estimator_learning_rate))


def _check_relaxed_signal(config, dataset, model, spec) -> None:
  """Refuses a user's model whose relaxed learning signal jumps (REBAR, RELAX,
  Concrete differentiate it on relaxed samples: `continuity`), probed at
  its initial parameters on the first training examples."""
  x = jnp.asarray(dataset.train[:4], jnp.float32)
  key_model, key_probe = jax.random.split(jax.random.key(config.seed))
  jump = gradients.relaxed_signal_jump(model, spec,
                                       _init_params(model, key_model), x,
                                       key_probe)
  if jump is None:
    return
  try:
    continuity.report(jump, 1e-4, "log p(x, b) - log q(b | x)")
  except ValueError as e:
    raise ConfigError(f"config.model={config.model!r} with "
                      f"config.estimator={config.estimator!r}: {e}") from e


def _init_params(model, key: Array) -> Params:
  """The model's initial variables (`init` of log_joint on zeros)."""
  x = jnp.zeros((1, model.data_dim))
  bs = tuple(jnp.zeros((1,) + tuple(layer.event_shape))
             for layer in model.stochastic_layers())
  return model.init(key, x, bs, method="log_joint")


def init_state(exp: Experiment, seed: int) -> TrainState:
  key_model, key_est = jax.random.split(jax.random.key(seed))
  params = _init_params(exp.model, key_model)
  est = exp.spec.init(key_est, exp.model)
  monitor = Monitor(jnp.full((), jnp.nan, jnp.float32),
                    jnp.zeros((RECENT,), jnp.float32))
  return TrainState(jnp.zeros((), jnp.int32), params,
                    exp.optimizer.init(params), est,
                    exp.estimator_optimizer.init(est.params), monitor)


def update(exp: Experiment, state: TrainState, x: Array, key: Array,
           noise: Optional[gradients.ChainNoise] = None
           ) -> tuple[TrainState, Params, dict[str, Array]]:
  """One training step on batch x: the model's gradients (of -ELBO) at
  `state` and both optax updates (model, estimator).

  Returns (the next state, the model's gradients, the step's metrics).
  """
  grads, est_grads, stats, metrics = gradients.model_gradients(
      exp.model, exp.spec, state.params, state.estimator, x, key,
      state.step, noise=noise)
  updates, opt_state = exp.optimizer.update(grads, state.opt_state,
                                            state.params)
  est_updates, est_opt_state = exp.estimator_optimizer.update(
      est_grads, state.estimator_opt_state, state.estimator.params)
  est = gradients.EstimatorState(
      optax.apply_updates(state.estimator.params, est_updates), stats)
  return TrainState(state.step + 1, optax.apply_updates(state.params, updates),
                    opt_state, est, est_opt_state, state.monitor), grads, metrics


# The most noise (bytes) a chunk of steps draws before its loop; a larger
# chunk (a large batch) draws it step by step instead.
CHUNK_NOISE_BYTES = 256 * 2**20


def make_train_chunk(exp: Experiment, seed: int,
                     max_traces: Optional[int] = None,
                     mesh: Optional[jax.sharding.Mesh] = None):
  """jit(scan(train_step)) over a (K, B) block of minibatch indices.

  Args:
    exp: the experiment.
    seed: the run's seed (root key).
    max_traces: if given, tracing the chunk more often than this raises
      (`chex.assert_max_traces`): a guard against silent retracing. A run
      traces it once per distinct chunk length (a shorter last chunk is one
      more).
    mesh: `parallel.data_mesh`: each step's batch is sharded over it and
      the state stays replicated (the inputs must be replicated on it);
      None: one device.
  """
  root = jax.random.key(seed)
  dynamic = exp.dataset.dynamic_binarization

  def train_step(state: TrainState, batch_index: Array, step_keys: Array,
                 train_x: Array, drawn: Any = None):
    key_bin, key_est = step_keys
    x = parallel.shard_batch(train_x[batch_index], mesh)
    chain, u = drawn if drawn is not None else (None, None)
    if dynamic:
      if u is None:
        u = jax.random.uniform(key_bin, x.shape)
      x = (u < x).astype(jnp.float32)
    state, _, metrics = update(exp, state, x, key_est, noise=chain)
    # One scalar per step: a non-finite gradient makes the updated
    # parameters, hence the next step's ELBO, non-finite (Adam propagates
    # NaN and inf); the chunk's last parameters are checked after the loop.
    return state, dict(metrics, finite=jnp.isfinite(metrics["elbo"]))

  def finish(start, state, metrics):
    """The chunk's guards and Monitor, once per chunk instead of per step."""
    elbo = metrics["elbo"]
    steps = start + jnp.arange(elbo.shape[0], dtype=start.dtype)
    params_ok = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(p)) for p in
                                     jax.tree.leaves(state.params)]))
    finite = metrics["finite"].at[-1].set(metrics["finite"][-1] & params_ok)
    monitor = Monitor(  # the last RECENT steps: no index written twice
        jnp.where(start == 0, elbo[0], state.monitor.initial_elbo),
        state.monitor.recent_elbo.at[steps[-RECENT:] % RECENT].set(
            elbo[-RECENT:]))
    return state._replace(monitor=monitor), dict(metrics, finite=finite)

  def train_chunk(state, indices, train_x):
    return finish(state.step, *loop(state, indices, train_x))

  def loop(state, indices, train_x):
    # split(fold_in(root, step)) for every step of the chunk in one batched
    # call: on CPU each threefry call is a rolled loop, so a per-step call
    # costs ~tens of microseconds of loop overhead per step at batch 24.
    steps = state.step + jnp.arange(indices.shape[0], dtype=state.step.dtype)
    keys = jax.vmap(lambda s: jax.random.split(jax.random.fold_in(root, s)))(
        steps)
    if not draw_per_chunk(indices.shape):
      return jax.lax.scan(lambda s, ik: train_step(s, *ik, train_x), state,
                          (indices, keys))
    # The chunk's randomness in one vectorised draw before the loop (the same
    # values as drawn step by step): on XLA's CPU backend a draw inside the
    # loop body costs per-op overhead at every step, not arithmetic.
    batch = indices.shape[1]
    chain = jax.vmap(lambda k: gradients.chain_noise(exp.model, batch, k))(
        keys[:, 1])
    u = (jax.vmap(lambda k: jax.random.uniform(
        k, (batch,) + train_x.shape[1:]))(keys[:, 0]) if dynamic else None)
    return jax.lax.scan(
        lambda s, ikd: train_step(s, ikd[0], ikd[1], train_x, ikd[2]), state,
        (indices, keys, (chain, u)))

  def draw_per_chunk(shape) -> bool:
    """Draw the chunk's noise before its loop: one-sample estimators, one
    device, and at most CHUNK_NOISE_BYTES of noise (else step by step)."""
    if exp.spec.is_multisample or mesh is not None:
      return False
    steps, batch = shape
    values = sum(int(np.prod(layer.event_shape))
                 for layer in exp.model.stochastic_layers())
    values += exp.model.data_dim if dynamic else 0
    return steps * batch * values * 4 <= CHUNK_NOISE_BYTES

  if max_traces is not None:
    train_chunk = chex.assert_max_traces(train_chunk, n=max_traces)
  return jax.jit(train_chunk, donate_argnums=0,
                 out_shardings=parallel.replicated(mesh))


def batch_indices(seed: int, num_examples: int, batch_size: int, start: int,
                  num_steps: int) -> np.ndarray:
  """Rows for steps [start, start + num_steps): epoch e is a permutation drawn
  from (seed, e), cut into full batches (the remainder of an epoch is skipped).
  """
  per_epoch = num_examples // batch_size
  if per_epoch < 1:
    raise ValueError(
        f"batch_size={batch_size} exceeds the {num_examples} training examples.")
  out, cache = np.empty((num_steps, batch_size), np.int32), {}
  for i, step in enumerate(range(start, start + num_steps)):
    epoch, pos = divmod(step, per_epoch)
    if epoch not in cache:
      cache = {epoch: np.random.default_rng([seed, epoch]).permutation(
          num_examples)}
    out[i] = cache[epoch][pos * batch_size:(pos + 1) * batch_size]
  return out


def _binarized(x: np.ndarray, dataset: data_lib.Dataset, seed: int) -> Array:
  """x itself for static data; one fixed Bernoulli draw for dynamic data."""
  if not dataset.dynamic_binarization:
    return jnp.asarray(x)
  u = np.random.default_rng(seed).uniform(size=x.shape)
  return jnp.asarray((u < x).astype(np.float32))


def evaluate(exp: Experiment, params: Params, config, split: str
             ) -> dict[str, float]:
  data = getattr(exp.dataset, split)
  if config.eval_max_examples:
    data = data[:config.eval_max_examples]
  res = objectives.evaluate(
      exp.model, params, data, jax.random.key(config.eval_seed),
      num_samples=config.eval_num_samples, batch_size=config.eval_batch_size,
      dynamic_binarization=exp.dataset.dynamic_binarization)
  # KL(q(z|x) || p(z|x)) = log p(x) - ELBO, with log p(x) estimated by the
  # IW bound: an underestimate of the KL by log p(x) - IW_N >= 0.
  return {f"{split}_elbo": res["elbo"],
          f"{split}_iw{config.eval_num_samples}": res["iw_bound"],
          f"{split}_kl": res["iw_bound"] - res["elbo"]}


# The signals that stop a run cleanly: Ctrl-C, a scheduler's pre-emption, a
# closed terminal or dropped ssh session.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _StopOnSignals:
  """Turns SIGINT / SIGTERM / SIGHUP into a request the loop honours between
  chunks.

  A second SIGINT raises KeyboardInterrupt at once (`main` prints how to
  resume). Handlers are installed only in the main thread (signal's rule) and
  restored on exit.
  """

  def __init__(self, requested: Optional[Callable[[], bool]] = None):
    self.signum: Optional[int] = None
    self._requested = requested
    self._old = {}

  def requested(self) -> bool:
    """A signal arrived, or the caller's `requested()` says stop."""
    return self.signum is not None or bool(
        self._requested and self._requested())

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def __enter__(self) -> "_StopOnSignals":
    if threading.current_thread() is threading.main_thread():
      for signum in STOP_SIGNALS:
        self._old[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._old.items():
      signal.signal(signum, handler)


def _config_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def config_digest(config: ml_collections.ConfigDict) -> str:
  """sha256 of the fields that change results (`runs.RESULT_FREE_FIELDS` out)."""
  identity = {k: v for k, v in _config_dict(config).items()
              if k not in runs.RESULT_FREE_FIELDS}
  return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()
                        ).hexdigest()


def _check_identity(record: runs.RunRecord, checkpointed: bool,
                    config: ml_collections.ConfigDict, data_sha256: str,
                    workdir: str, allow_change: bool) -> dict[str, Any]:
  """The result-changing differences from the run's record, if allowed.

  Raises:
    runs.WorkdirError: they differ (or the workdir has checkpoints but no
      record) and `allow_change` is False. A record without checkpoints
      (no step was saved) describes no state: any config may start there.
  """
  ways_out = ("Either use a new --workdir for the new configuration, or "
              "rerun with --allow_config_change to continue this run with it "
              "(the change is recorded in run.json).")
  if not record.exists:
    if checkpointed and jax.process_index() == 0 and not allow_change:
      raise runs.WorkdirError(
          f"{workdir} holds checkpoints but no {runs.RECORD_FILE} (written "
          "by an older rebar_jax?), so its configuration cannot be checked. "
          + ways_out)
    return {}
  if not checkpointed:
    return {}
  changes = record.changes(_config_dict(config), data_sha256)
  if changes and not allow_change:
    listing = "\n".join(f"  {name}: {old!r} in the run, {new!r} now"
                        for name, (old, new) in changes.items())
    raise runs.WorkdirError(
        f"{workdir} holds a run with another configuration or data; resuming "
        f"it would report numbers that belong to neither. Differences:\n"
        f"{listing}\n{ways_out}")
  return changes


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_after: Optional[int] = None,
                       allow_config_change: bool = False,
                       stop_requested: Optional[Callable[[], bool]] = None
                       ) -> dict[str, Any]:
  """Trains, evaluates and checkpoints; resumes from `workdir` if possible.

  Args:
    config: see configs/sbn_mnist.py for the fields.
    workdir: output directory; a run there is resumed.
    stop_after: stop (as if interrupted) after this many steps of this call;
      used to test exact resumption.
    allow_config_change: resume even if result-changing fields of the config
      (or the data) differ from the run's record; the change is recorded.
    stop_requested: polled between chunks; True stops the run as SIGTERM
      does (a sweep's trials stop this way when the sweep is interrupted).

  Returns:
    The final metrics (also written to workdir/final_metrics.json), or
    {"step": ...} when stopped early by `stop_after`.

  Raises:
    ConfigError, rebar_jax.data.DataError, FileNotFoundError: bad config or
      data, before anything is written.
    runs.WorkdirError: the workdir is locked by another process, or holds a
      run of another configuration; nothing is written.
    checkpoints.CheckpointError: no intact checkpoint fits this run.
    TrainingStopped: a non-finite or diverged run; the last good checkpoint
      is kept.
    Interrupted: SIGINT or SIGTERM, after saving a checkpoint.
  """
  exp = build(config)
  mesh = _mesh(config)
  data_sha256 = exp.dataset.fingerprint
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
  # The checkpoints are shared by all processes of a multi-process run; its
  # other files are process 0's, the others keep a private copy.
  primary = jax.process_index() == 0
  files = workdir if primary else os.path.join(
      workdir, "processes", str(jax.process_index()))
  # Refuse before writing anything; checked again under the lock.
  _check_identity(runs.RunRecord(files), ckpt.latest_step() is not None,
                  config, data_sha256, files, allow_config_change)
  fresh = _init_checked(exp, config)
  os.makedirs(files, exist_ok=True)
  with runs.WorkdirLock(files) as lock, _StopOnSignals(
      stop_requested) as stop:
    record = runs.RunRecord(files)
    checkpointed = ckpt.latest_step() is not None
    changes = _check_identity(record, checkpointed, config, data_sha256,
                              files, allow_config_change)
    return _train(exp, config, files, ckpt, record, changes, data_sha256,
                  stop, stop_after, mesh, fresh, lock.check)


def _init_checked(exp: Experiment, config: ml_collections.ConfigDict
                  ) -> TrainState:
  """`init_state`, with a user's model that cannot initialise on this data
  reported as a ConfigError (before anything is written)."""
  try:
    return init_state(exp, config.seed)
  except (TypeError, ValueError) as e:
    if config.model in MODELS:
      raise
    raise ConfigError(
        f"config.model={config.model!r} cannot initialise on {config.dataset} "
        f"(data_dim {exp.dataset.data_dim}): {type(e).__name__}: "
        f"{str(e).splitlines()[0][:300]}") from e


def _train(exp: Experiment, config: ml_collections.ConfigDict, workdir: str,
           ckpt: checkpoints.Checkpointer, record: runs.RunRecord,
           changes: dict[str, Any], data_sha256: str, stop: _StopOnSignals,
           stop_after: Optional[int], mesh: Optional[jax.sharding.Mesh],
           fresh: TrainState, check_workdir) -> dict[str, Any]:
  """The body of `train_and_evaluate`, with the workdir locked and checked."""
  state, damaged = ckpt.restore_latest_intact(fresh)
  for path in ckpt.adopted:
    print(f"Warning: checkpoint {path} had no digest (the process stopped "
          "after orbax finished it); orbax marks it complete and it "
          "restores, so its digest was written and it is used.")
  for d in damaged:
    print(f"Warning: checkpoint {d.path} is damaged ({d.reason}); moved to "
          f"{d.moved_to}, never restored.")
  if state is None:
    state = fresh
  state = parallel.replicate(state, mesh)
  start = int(state.step)
  if start:
    print(f"Resuming from step {start} in {workdir}"
          + (f" (fell back past {len(damaged)} damaged checkpoint(s))"
             if damaged else ""))
    versions = record.version_changes() if record.exists else {}
    if versions:
      print("Warning: this run was recorded under other software ("
            + ", ".join(f"{k} {a} then, {b} now"
                        for k, (a, b) in versions.items())
            + "); the resumed numbers may differ from an uninterrupted "
            "run's in the last digits.")
  if start > config.num_steps:
    print(f"Warning: the checkpoint is at step {start}, past "
          f"config.num_steps={config.num_steps}; a run cannot be shortened, "
          f"so nothing is trained and the final metrics are step {start}'s. "
          "Use a new --workdir for a shorter run.")
  record.write(_config_dict(config), data_sha256, start,
               "resume" if start else "start", changes)
  runs.write_atomic(os.path.join(workdir, "config.json"),
                    config.to_json_best_effort(indent=2))

  train_chunk = make_train_chunk(exp, config.seed, mesh=mesh)
  train_x = parallel.replicate(jnp.asarray(exp.dataset.train), mesh)
  metric_writer = writers.MetricWriter(workdir, resume_step=start)
  k = config.steps_per_call
  end = config.num_steps if stop_after is None else min(
      config.num_steps, start + stop_after)
  devices = "1 device" if mesh is None else f"{mesh.size} devices"
  print(f"{exp.dataset}\n{exp.model.__class__.__name__}, estimator "
        f"{config.estimator}: steps {start}..{end} on {jax.default_backend()} "
        f"({devices})")

  diagnose = diagnostics.make_diagnostics(
      exp.model, exp.spec, config.diagnostic_draws, config.eval_num_samples)
  x_diag = _binarized(exp.dataset.train[:config.batch_size], exp.dataset,
                      config.eval_seed)
  x_many = _binarized(exp.dataset.valid[:1000], exp.dataset, config.eval_seed)
  bar = tqdm(total=end - start, desc=f"{config.estimator}", unit="step",
             dynamic_ncols=True, disable=not config.progress_bar)
  tic, step, saved = time.perf_counter(), start, start
  stopping = False  # a signal reached this process (or another one)
  while step < end:
    check_workdir()  # raises if it was deleted
    stopping = parallel.any_process(stop.requested())
    if stopping:
      break
    n = min(k, end - step)
    indices = batch_indices(config.seed, exp.dataset.train.shape[0],
                            config.batch_size, step, n)
    state, metrics = train_chunk(
        state, parallel.replicate(indices, mesh), train_x)
    metrics = jax.device_get(metrics)
    stopping = parallel.any_process(stop.requested())
    _check_progress(metrics, float(state.monitor.initial_elbo), step, config,
                    ckpt, workdir)
    step += n
    elapsed = time.perf_counter() - tic
    row = {"step": step, "train_elbo": float(np.mean(metrics["elbo"])),
           **({f"train_iw{config.iw_samples}": float(np.mean(
               metrics["iw_bound"]))} if "iw_bound" in metrics else {}),
           "estimator_loss": float(np.mean(metrics["estimator_loss"])),
           "steps_per_sec": n / elapsed}
    row.update(exp.spec.summary(jax.device_get(state.estimator.params)))
    tic = time.perf_counter()
    if (step % config.eval_every == 0 or step == config.num_steps) and (
        not stopping):
      for split in ("valid", "test"):
        row.update(evaluate(exp, parallel.local(state.params), config, split))
      if config.diagnostic_draws > 1:
        row.update({name: float(v) for name, v in diagnose(
            *parallel.local((state.params, state.estimator)), x_diag, x_many,
            jax.random.key(config.eval_seed), step).items()})
      tic = time.perf_counter()
    metric_writer.write(row)
    bar.update(n)
    bar.set_postfix(elbo=f"{row['train_elbo']:.2f}")
    if (step % config.checkpoint_every == 0 or step == end
        or stopping):
      check_workdir()
      ckpt.save(step, state)
      metric_writer.flush()
      saved = step
  bar.close()
  ckpt.wait()
  if stopping:
    if saved != step:
      ckpt.save(step, state)
    metric_writer.close()
    raise Interrupted(stop.signum or signal.SIGTERM, step, workdir)

  final = {"step": int(state.step)}
  if int(state.step) >= config.num_steps:
    final["train_elbo_last_1000_steps"] = recent_train_elbo(state)
    rows = metric_writer.rows()
    evaluated = {key: v for key, v in (rows[-1] if rows else {}).items()
                 if key.startswith(("valid_", "test_"))}
    if rows and rows[-1]["step"] == int(state.step) and evaluated:
      final.update(evaluated)  # the loop's last row evaluated these params
    else:
      for split in ("valid", "test"):
        final.update(evaluate(exp, parallel.local(state.params), config,
                              split))
    final["config_sha256"] = config_digest(config)
    final["data_sha256"] = data_sha256
    changed_at = [h["step"] for h in record.data["history"]
                  if h.get("changes")]
    if changed_at:
      final["config_changed_at_steps"] = changed_at
    runs.write_atomic(os.path.join(workdir, "final_metrics.json"),
                      json.dumps(final, indent=2))
    plots.plot_curves(rows, os.path.join(workdir, "curves.png"))
  metric_writer.close()
  return final


def _mesh(config: ml_collections.ConfigDict) -> Optional[jax.sharding.Mesh]:
  """The run's data-parallel mesh (None: one device), checked against the
  batch size."""
  try:
    mesh = parallel.data_mesh(config.num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if mesh is not None and config.batch_size % mesh.size:
    raise ConfigError(
        f"config.batch_size={config.batch_size} must be a multiple of the "
        f"{mesh.size} devices it is sharded over (config.num_devices="
        f"{config.num_devices}).")
  return mesh


def _check_progress(metrics: dict[str, np.ndarray], initial_elbo: float,
                    step: int, config: ml_collections.ConfigDict,
                    ckpt: checkpoints.Checkpointer, workdir: str) -> None:
  """Raises TrainingStopped for a non-finite or diverged chunk of steps."""
  last = ckpt.latest_step()
  keep = (f"the last checkpoint (step {last}) in {workdir}/checkpoints is "
          "kept" if last is not None else "no checkpoint was written yet")
  if not np.all(metrics["finite"]):
    bad = step + int(np.argmin(metrics["finite"]))
    raise TrainingStopped(
        f"Non-finite ELBO or gradient at step {bad} (a step's non-finite "
        "gradient shows in the next step's ELBO, or in the parameters at a "
        f"chunk's end) with estimator "
        f"{config.estimator!r}; {keep}. Try a lower learning_rate or "
        "another estimator.")
  chunk_elbo = float(np.mean(metrics["elbo"]))
  if chunk_elbo < initial_elbo - config.divergence_threshold:
    end = step + len(metrics["elbo"])
    raise TrainingStopped(
        f"Diverged: the mean training ELBO of steps {step}..{end} is "
        f"{chunk_elbo:.4g}, more than config.divergence_threshold="
        f"{config.divergence_threshold:g} nats below its value at "
        f"initialisation ({initial_elbo:.4g}), with estimator "
        f"{config.estimator!r} and learning_rate={config.learning_rate:g}; "
        f"{keep}. Try a lower learning_rate or another estimator.")


def recent_train_elbo(state: TrainState) -> float:
  """Mean training ELBO over the last min(step, RECENT) steps, from the state.

  Each step counts once (a mean over steps, not over logged rows).
  """
  step = int(state.step)
  values = np.asarray(state.monitor.recent_elbo, np.float64)
  return float(np.mean(values[:step] if step < RECENT else values))


def define_flags() -> None:
  """Defines the command line's flags (when run as a program, not on import:
  scripts that import this module define their own --config)."""
  config_flags.DEFINE_config_file(
      "config", None, "Training configuration file.", lock_config=True)
  flags.DEFINE_string(
      "workdir", None, "Output directory (resumed if it holds a checkpoint); "
      "defaults to runs/<config name>-<estimator>.")
  flags.DEFINE_bool(
      "allow_config_change", False,
      "Resume a run although result-changing config fields (or the data) "
      "differ from its record in run.json; the change is recorded there.")
  flags.DEFINE_string(
      "coordinator_address", None, "A multi-process run: process 0's "
      "HOST:PORT (with --num_processes and --process_id; each process runs "
      "the same command). rebar_jax/parallel.py.")
  flags.DEFINE_integer("num_processes", None, "Processes of a multi-process "
                       "run.")
  flags.DEFINE_integer("process_id", None, "This process's index (0 writes "
                       "the run's files).")


# Errors that are the user's to fix: printed as one message, no traceback.
USER_ERRORS = (ConfigError, data_lib.DataError, FileNotFoundError,
               ImportError, runs.WorkdirError, checkpoints.CheckpointError,
               TrainingStopped)


def os_error_message(e: OSError) -> str:
  """One line naming the file and the fix for a failed read or write."""
  if e.errno is None:  # raised with a message of its own
    return str(e)
  path = e.filename or "the workdir"
  if e.errno in (errno.ENOSPC, errno.EDQUOT):
    return f"disk full writing {path}; free space and rerun."
  if e.errno == errno.EROFS:
    return (f"{path} is on a read-only file system; choose a --workdir on a "
            "writable disk.")
  if e.errno in (errno.EACCES, errno.EPERM):
    return (f"no permission to write {path}; choose a --workdir you can "
            "write.")
  if e.errno == errno.ENOENT:
    return f"{path} does not exist ({e.strerror})."
  return f"{path}: {e.strerror or e}."


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a `--config.field` the config lacks reported
  as one line (ml_collections raises it as an AttributeError)."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    while e.args and isinstance(e.args[0], (AttributeError, KeyError)):
      e = e.args[0]  # ml_collections wraps the KeyError
    lines = str(e.args[0] if e.args else e).splitlines() or [""]
    field = lines[0].strip("'\"")
    print(f"error: the config has no field {field!r}."
          + "".join(f" {l.strip()}" for l in lines[1:]), file=sys.stderr)
    sys.exit(1)


def default_workdir(config_path: str, config: ml_collections.ConfigDict
                    ) -> str:
  """runs/<config file name>-<estimator>, relative to the current directory."""
  name = os.path.splitext(os.path.basename(config_path))[0]
  estimator = config.estimator.replace(":", "-").replace(",", "+")
  return os.path.join("runs", f"{name}-{estimator}")


def _exit_now(code: int) -> None:
  """Exits after a stopped run's one line, without interpreter shutdown.

  A checkpoint the stop cut short (a second Ctrl-C, a full disk) can still
  have orbax threads running, which print tracebacks when the interpreter
  shuts down under them; its temporary files are never restored.
  """
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # orbax logs every checkpoint step at INFO; keep the console to the bar.
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  if f.coordinator_address or f.num_processes or f.process_id is not None:
    parallel.initialize(f.coordinator_address, f.num_processes, f.process_id)
  config = flags.FLAGS.config
  if config is None:
    raise app.UsageError("--config is required, e.g. "
                         "--config=configs/sbn_mnist.py")
  workdir = flags.FLAGS.workdir or default_workdir(
      config_flags.get_config_filename(flags.FLAGS["config"]), config)
  try:
    final = train_and_evaluate(
        config, workdir, allow_config_change=flags.FLAGS.allow_config_change)
  except Interrupted as e:
    print(e)
    sys.exit(128 + e.signum)
  except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint of this step
    last = checkpoints.Checkpointer(
        os.path.join(workdir, "checkpoints")).latest_step()
    kept = (f"the last checkpoint (step {last}) in {workdir}/checkpoints is "
            "kept" if last is not None else "no checkpoint was written yet")
    print(f"Stopped by a second SIGINT without saving; {kept}. Run the same "
          "command to resume.")
    _exit_now(128 + signal.SIGINT)
  except OSError as e:
    if e.errno == errno.ENOENT and not os.path.isdir(workdir):
      message = (f"the workdir {workdir} is gone (deleted while the run "
                 "was going); run the same command to start again.")
    else:
      message = os_error_message(e)
    print(f"error: {message}", file=sys.stderr)
    _exit_now(1)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    _exit_now(1)
  lines = [f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}"
           for k, v in final.items()]
  print("Final metrics (" + workdir + "):\n  " + "\n  ".join(lines))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
