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

What a run guarantees (docs/guides/runs.md, "Runs and failures"):
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

Where the pieces live: `rebar_jax.config_checks` checks a config's values,
`rebar_jax.model_registry` turns config.model into a model, `rebar_jax.errors`
holds what a run raises, and `rebar_jax.cli` is the command line (`main`, its
flags and one-line error exits); this module builds the experiment, compiles
the train step and runs the host loop.
"""
import dataclasses
import hashlib
import json
import os
import signal
import threading
import time
from typing import Any, Callable, NamedTuple, Optional

from absl import app
from absl import flags
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from rebar_jax import config_checks
from rebar_jax import data as data_lib
from rebar_jax import diagnostics
from rebar_jax import errors
from rebar_jax import gradients
from rebar_jax import model_registry
from rebar_jax import objectives
from rebar_jax import parallel
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
# config.estimator that lets the advisor choose (`_advised`); until it has,
# the experiment is built with AUTO_START.
AUTO = "auto"
AUTO_START = "reinforce"
# config.advise_candidates for every estimator that applies ("": the
# registry's short list, `registry.Entry.auto`).
AUTO_ALL = "all"
# The advisor's budget at each decision (`advise.Budget`): no timing (the
# decision is a function of the state), no exact check.
AUTO_BUDGET: dict[str, Any] = {
    "num_draws": 8, "num_batches": 1, "tune_steps": 20, "bootstrap": 200,
    "bias_check": False, "timing": False}


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


@dataclasses.dataclass(frozen=True)
class Experiment:
  """The pieces built from a config: data, model, estimator, optimisers."""
  dataset: data_lib.Dataset
  model: Any  # follows rebar_jax.models.protocol (SBN, CategoricalVAE, ...)
  spec: gradients.EstimatorSpec
  optimizer: optax.GradientTransformation
  estimator_optimizer: optax.GradientTransformation


# --- the experiment --------------------------------------------------------


def load_data(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  """The config's data set (`config.data_dir` checked to be a directory)."""
  config_checks.check_data_dir(config)
  return data_lib.load_dataset(
      config.dataset, config.data_source, config.data_dir or None,
      seed=config.seed)


def build(config: ml_collections.ConfigDict,
          dataset: Optional[data_lib.Dataset] = None) -> Experiment:
  """Data, model, estimator and optimisers from a config (validated).

  `dataset`: the config's data, already loaded (`load_data`), e.g. to check
  many configs on the same data.

  Raises:
    rebar_jax.errors.ConfigError: a config value that cannot work (the
      message names it).
    rebar_jax.data.DataError, FileNotFoundError, ImportError, RuntimeError:
      the data set cannot be loaded (the message says how to provide it).
  """
  config_checks.check_config(config)
  if config.estimator == AUTO:
    config = _with_estimator(config, AUTO_START)
  if dataset is None:
    dataset = load_data(config)
  config_checks.check_batch_size(config, dataset)
  model = model_registry.make_model(config, dataset)
  spec = config_checks.estimator_spec(config, model)
  if config.model not in model_registry.MODELS:  # the library's are continuous
    config_checks.check_relaxed_signal(config, dataset, model, spec)
  return Experiment(dataset, model, spec, optax.adam(config.learning_rate),
                    optax.adam(config.estimator_learning_rate))


def _with_estimator(config: ml_collections.ConfigDict, name: str
                    ) -> ml_collections.ConfigDict:
  c = config.copy_and_resolve_references()
  c.estimator = name
  c.advise_every, c.advise_candidates = 0, ""
  return c


def init_state(exp: Experiment, seed: int) -> TrainState:
  key_model, key_est = jax.random.split(jax.random.key(seed))
  params = model_registry.init_params(exp.model, key_model)
  est = exp.spec.init(key_est, exp.model)
  monitor = Monitor(jnp.full((), jnp.nan, jnp.float32),
                    jnp.zeros((RECENT,), jnp.float32))
  return TrainState(jnp.zeros((), jnp.int32), params,
                    exp.optimizer.init(params), est,
                    exp.estimator_optimizer.init(est.params), monitor)


# --- the compiled train step -----------------------------------------------


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
  state = TrainState(state.step + 1,
                     optax.apply_updates(state.params, updates), opt_state,
                     est, est_opt_state, state.monitor)
  return state, grads, metrics


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

  def train_chunk(state, indices, train_x):
    return _finish_chunk(
        state.step, *_scan_chunk(exp, mesh, root, state, indices, train_x))

  if max_traces is not None:
    train_chunk = chex.assert_max_traces(train_chunk, n=max_traces)
  return jax.jit(train_chunk, donate_argnums=0,
                 out_shardings=parallel.replicated(mesh))


def _train_step(exp: Experiment, mesh: Optional[jax.sharding.Mesh],
                state: TrainState, batch_index: Array, step_keys: Array,
                train_x: Array, drawn: Any = None):
  """One step of the scan: the batch (binarized if dynamic) and `update`."""
  key_bin, key_est = step_keys
  x = parallel.shard_batch(train_x[batch_index], mesh)
  chain, u = drawn if drawn is not None else (None, None)
  if exp.dataset.dynamic_binarization:
    if u is None:
      u = jax.random.uniform(key_bin, x.shape)
    x = (u < x).astype(jnp.float32)
  state, _, metrics = update(exp, state, x, key_est, noise=chain)
  # One scalar per step: a non-finite gradient makes the updated
  # parameters, hence the next step's ELBO, non-finite (Adam propagates
  # NaN and inf); the chunk's last parameters are checked after the loop.
  return state, dict(metrics, finite=jnp.isfinite(metrics["elbo"]))


def _finish_chunk(start: Array, state: TrainState, metrics: dict[str, Array]):
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


def _scan_chunk(exp: Experiment, mesh: Optional[jax.sharding.Mesh],
                root: Array, state: TrainState, indices: Array,
                train_x: Array):
  """lax.scan of `_train_step` over the chunk's steps."""
  # split(fold_in(root, step)) for every step of the chunk in one batched
  # call: on CPU each threefry call is a rolled loop, so a per-step call
  # costs ~tens of microseconds of loop overhead per step at batch 24.
  steps = state.step + jnp.arange(indices.shape[0], dtype=state.step.dtype)
  keys = jax.vmap(lambda s: jax.random.split(jax.random.fold_in(root, s)))(
      steps)
  if not _draw_per_chunk(exp, mesh, indices.shape):
    return jax.lax.scan(
        lambda s, ik: _train_step(exp, mesh, s, *ik, train_x), state,
        (indices, keys))
  # The chunk's randomness in one vectorised draw before the loop (the same
  # values as drawn step by step): on XLA's CPU backend a draw inside the
  # loop body costs per-op overhead at every step, not arithmetic.
  batch = indices.shape[1]
  chain = jax.vmap(lambda k: gradients.chain_noise(exp.model, batch, k))(
      keys[:, 1])
  u = (jax.vmap(lambda k: jax.random.uniform(
      k, (batch,) + train_x.shape[1:]))(keys[:, 0])
       if exp.dataset.dynamic_binarization else None)
  return jax.lax.scan(
      lambda s, ikd: _train_step(exp, mesh, s, ikd[0], ikd[1], train_x,
                                 ikd[2]), state,
      (indices, keys, (chain, u)))


def _draw_per_chunk(exp: Experiment, mesh: Optional[jax.sharding.Mesh],
                    shape: tuple[int, ...]) -> bool:
  """Draw the chunk's noise before its loop: one-sample estimators, one
  device, and at most CHUNK_NOISE_BYTES of noise (else step by step)."""
  if exp.spec.is_multisample or mesh is not None:
    return False
  steps, batch = shape
  values = sum(int(np.prod(layer.event_shape))
               for layer in exp.model.stochastic_layers())
  values += exp.model.data_dim if exp.dataset.dynamic_binarization else 0
  return steps * batch * values * 4 <= CHUNK_NOISE_BYTES


def batch_indices(seed: int, num_examples: int, batch_size: int, start: int,
                  num_steps: int) -> np.ndarray:
  """Rows for steps [start, start + num_steps): epoch e is a permutation drawn
  from (seed, e), cut into full batches (the remainder of an epoch is skipped).
  """
  per_epoch = num_examples // batch_size
  if per_epoch < 1:
    raise ValueError(f"batch_size={batch_size} exceeds the {num_examples} "
                     "training examples.")
  out, cache = np.empty((num_steps, batch_size), np.int32), {}
  for i, step in enumerate(range(start, start + num_steps)):
    epoch, pos = divmod(step, per_epoch)
    if epoch not in cache:
      cache = {epoch: np.random.default_rng([seed, epoch]).permutation(
          num_examples)}
    out[i] = cache[epoch][pos * batch_size:(pos + 1) * batch_size]
  return out


# --- evaluation -------------------------------------------------------------


def binarized(x: np.ndarray, dataset: data_lib.Dataset, seed: int) -> Array:
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


def recent_train_elbo(state: TrainState) -> float:
  """Mean training ELBO over the last min(step, RECENT) steps, from the state.

  Each step counts once (a mean over steps, not over logged rows).
  """
  step = int(state.step)
  values = np.asarray(state.monitor.recent_elbo, np.float64)
  return float(np.mean(values[:step] if step < RECENT else values))


# --- signals and the run's identity ----------------------------------------


# The signals that stop a run cleanly: Ctrl-C, a scheduler's pre-emption, a
# closed terminal or dropped ssh session.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _StopOnSignals:
  """Turns SIGINT / SIGTERM / SIGHUP into a request the loop honours between
  chunks.

  A second SIGINT raises KeyboardInterrupt at once (`rebar_jax.cli.main`
  prints how to resume). Handlers are installed only in the main thread
  (signal's rule) and restored on exit.
  """

  def __init__(self, requested: Optional[Callable[[], bool]] = None):
    self.signum: Optional[int] = None
    self._requested = requested
    self._old: dict[int, Any] = {}

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
  """sha256 of the fields that change results (all but
  `runs.RESULT_FREE_FIELDS`)."""
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


# --- the run ----------------------------------------------------------------


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
    rebar_jax.errors.ConfigError, rebar_jax.data.DataError,
      FileNotFoundError: bad config or data, before anything is written.
    runs.WorkdirError: the workdir is locked by another process, or holds a
      run of another configuration; nothing is written.
    checkpoints.CheckpointError: no intact checkpoint fits this run.
    rebar_jax.errors.TrainingStopped: a non-finite or diverged run; the last
      good checkpoint is kept.
    rebar_jax.errors.Interrupted: SIGINT or SIGTERM, after saving a
      checkpoint.
  """
  exp = build(config)
  mesh = _mesh(config)
  data_sha256 = exp.dataset.fingerprint
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
  # The checkpoints are shared by all processes of a multi-process run; its
  # other files are process 0's, the others keep a private copy.
  files = workdir if jax.process_index() == 0 else os.path.join(
      workdir, "processes", str(jax.process_index()))
  # Refuse before writing anything; checked again under the lock.
  _check_identity(runs.RunRecord(files), ckpt.latest_step() is not None,
                  config, data_sha256, files, allow_config_change)
  fresh = _init_checked(exp, config)
  os.makedirs(files, exist_ok=True)
  with runs.WorkdirLock(files) as lock, _StopOnSignals(
      stop_requested) as stop:
    record = runs.RunRecord(files)
    changes = _check_identity(record, ckpt.latest_step() is not None, config,
                              data_sha256, files, allow_config_change)
    run = _Run(exp, config, files, ckpt, record, data_sha256, mesh, stop,
               lock.check)
    return _train(run, changes, stop_after, fresh)


def _init_checked(exp: Experiment, config: ml_collections.ConfigDict
                  ) -> TrainState:
  """`init_state`, with a user's model that cannot initialise on this data
  reported as a ConfigError (before anything is written)."""
  try:
    return init_state(exp, config.seed)
  except (TypeError, ValueError) as e:
    if config.model in model_registry.MODELS:
      raise
    raise errors.ConfigError(
        f"config.model={config.model!r} cannot initialise on {config.dataset} "
        f"(data_dim {exp.dataset.data_dim}): {type(e).__name__}: "
        f"{str(e).splitlines()[0][:300]}") from e


def _mesh(config: ml_collections.ConfigDict) -> Optional[jax.sharding.Mesh]:
  """The run's data-parallel mesh (None: one device), checked against the
  batch size."""
  try:
    mesh = parallel.data_mesh(config.num_devices)
  except ValueError as e:
    raise errors.ConfigError(str(e)) from None
  if mesh is not None and config.batch_size % mesh.size:
    raise errors.ConfigError(
        f"config.batch_size={config.batch_size} must be a multiple of the "
        f"{mesh.size} devices it is sharded over (config.num_devices="
        f"{config.num_devices}).")
  return mesh


@dataclasses.dataclass(frozen=True)
class _Run:
  """What the host loop of a run works with, its workdir locked and checked.

  workdir: this process's files (process 0: the run's workdir).
  check_workdir: raises if the workdir was deleted.
  programs: compiled programs kept across estimator=auto's segments: the
    advisor's steps (`advise.advise`'s programs), and the training chunk and
    the evaluation of each estimator trained ("train_chunk:<name>",
    "evaluation:<name>").
  """
  exp: Experiment
  config: ml_collections.ConfigDict
  workdir: str
  ckpt: checkpoints.Checkpointer
  record: runs.RunRecord
  data_sha256: str
  mesh: Optional[jax.sharding.Mesh]
  stop: _StopOnSignals
  check_workdir: Callable[[], None]
  programs: dict[str, Any] = dataclasses.field(default_factory=dict)


def _train(run: _Run, changes: dict[str, Any], stop_after: Optional[int],
           fresh: TrainState) -> dict[str, Any]:
  """The body of `train_and_evaluate`, with the workdir locked and checked."""
  config = run.config
  if config.estimator == AUTO:  # the checkpoint's state is its estimator's
    run, fresh = _switch(run, fresh, _auto_at(run, run.ckpt.latest_step()))
  state = _restore(run, fresh)
  start = int(state.step)
  run.record.write(_config_dict(config), run.data_sha256, start,
                   "resume" if start else "start", changes)
  runs.write_atomic(os.path.join(run.workdir, "config.json"),
                    config.to_json_best_effort(indent=2))

  train_x = parallel.replicate(jnp.asarray(run.exp.dataset.train), run.mesh)
  metric_writer = writers.MetricWriter(run.workdir, resume_step=start)
  end = max(start, config.num_steps if stop_after is None else min(
      config.num_steps, start + stop_after))  # a run is never shortened
  devices = "1 device" if run.mesh is None else f"{run.mesh.size} devices"
  print(f"{run.exp.dataset}\n{run.exp.model.__class__.__name__}, estimator "
        f"{config.estimator}: steps {start}..{end} on {jax.default_backend()} "
        f"({devices})")
  step, saved, stopping = start, start, False
  while step < end and not stopping:  # one segment per estimator=auto advice
    segment_end = end
    if config.estimator == AUTO:
      run, state = _advised(run, state, step)
      if config.advise_every:
        segment_end = min(end, (step // config.advise_every + 1)
                          * config.advise_every)
    chunk_key = f"train_chunk:{run.exp.spec.name}"
    if chunk_key not in run.programs:  # one compile per estimator trained
      run.programs[chunk_key] = make_train_chunk(run.exp, config.seed,
                                                 mesh=run.mesh)
    train_chunk = run.programs[chunk_key]
    state, step, saved, stopping = _loop(
        run, state, step, segment_end, train_chunk, train_x, metric_writer)
  run.ckpt.wait()
  if stopping:
    if saved != step:
      _save(run, step, state)
    metric_writer.close()
    raise errors.Interrupted(run.stop.signum or signal.SIGTERM, step,
                             run.workdir)
  final: dict[str, Any] = {"step": int(state.step)}
  if int(state.step) >= config.num_steps:
    final.update(_final_metrics(run, state, metric_writer.rows()))
  metric_writer.close()
  return final


def _auto_at(run: _Run, step: Optional[int]) -> str:
  """The recorded estimator=auto decision in force at `step` (the advice at
  or before step - 1: a checkpoint at an advice point holds the state of the
  segment before it); AUTO_START before any."""
  decisions = run.record.advice()
  if not step or not decisions:
    return AUTO_START
  point = 0 if not run.config.advise_every else (
      (step - 1) // run.config.advise_every * run.config.advise_every)
  return decisions[point]["estimator"] if point in decisions else AUTO_START


def _switch(run: _Run, state: TrainState, name: str
            ) -> tuple[_Run, TrainState]:
  """The run and state with estimator `name`: unchanged if it is the
  current one (its tuned state kept), else a new experiment and the
  estimator's initial state (from the run's seed and step)."""
  if name == run.exp.spec.name:
    return run, state
  exp = build(_with_estimator(run.config, name), run.exp.dataset)
  key = jax.random.fold_in(jax.random.key(run.config.seed), int(state.step))
  est = exp.spec.init(key, exp.model)
  return dataclasses.replace(run, exp=exp), parallel.replicate(
      state._replace(estimator=est, estimator_opt_state=(
          exp.estimator_optimizer.init(est.params))), run.mesh)


def auto_decision(current: str, advice: Any) -> tuple[str, str]:
  """estimator=auto's choice, (name, reason), given the estimator training
  uses now and an `advise.Advice`: its recommendation, unless `current` ties
  with it (ranks first too), when `current` is kept: no switch for a
  difference the draws do not resolve (the tuned state and the compiled
  chunk are kept)."""
  leaders = {r["name"] for r in advice.rows if r["rank"] == 1}
  if current != advice.recommendation and current in leaders:
    return current, (f"{current}: kept, tied with the leader (advice: "
                     f"{advice.reason})")
  return advice.recommendation, advice.reason


def _advised(run: _Run, state: TrainState, step: int
             ) -> tuple[_Run, TrainState]:
  """estimator=auto at `step`: at an advice point (step 0 and every
  config.advise_every), the recorded decision, or the advisor's now (ranked
  by variance x f evaluations at the current parameters: a function of the
  run's state and seed, so an interrupted run decides as an uninterrupted
  one), recorded in run.json with its table (Markdown, CSV and JSON; no
  plot, which costs a decision more than its measuring) in
  <workdir>/advice/step_<n>/;
  the current estimator is kept when it ties with the leader (rank 1);
  between points, the decision in force."""
  config = run.config
  every = config.advise_every
  if step and (not every or step % every):
    return _switch(run, state, _auto_at(run, step + 1))
  if step not in run.record.advice():
    from rebar_jax import advise  # pylint: disable=g-import-not-at-top
    names = (None if config.advise_candidates == AUTO_ALL else
             advise.group_names(config.advise_candidates.split(","))
             or advise.candidates(gradients.layer_families(run.exp.model),
                                  auto=True))
    advice = advise.advise(
        _with_estimator(config, AUTO_START),
        params=parallel.local(state.params), start_step=step,
        budget=advise.Budget(**AUTO_BUDGET, seed=config.seed + step),
        names=names, log=lambda line: None, programs=run.programs)
    if advice.recommendation is None:
      raise errors.TrainingStopped(
          f"estimator=auto at step {step}: {advice.reason} Choose "
          "config.estimator yourself.")
    chosen, reason = auto_decision(run.exp.spec.name, advice)
    table = os.path.join("advice", f"step_{step}")
    advise.write(advice, os.path.join(run.workdir, table),
                 f"estimator=auto at step {step}", with_plot=False)
    run.record.add_advice(step, chosen, reason, table)
    print(f"estimator=auto at step {step}: {reason}")
  return _switch(run, state, run.record.advice()[step]["estimator"])


def _restore(run: _Run, fresh: TrainState) -> TrainState:
  """The newest intact checkpoint (else `fresh`), replicated, with a line for
  each damaged or adopted checkpoint, the resumption and other software."""
  state, damaged = run.ckpt.restore_latest_intact(fresh)
  for path in run.ckpt.adopted:
    print(f"Warning: checkpoint {path} had no digest (the process stopped "
          "after orbax finished it); orbax marks it complete and it "
          "restores, so its digest was written and it is used.")
  for d in damaged:
    print(f"Warning: checkpoint {d.path} is damaged ({d.reason}); moved to "
          f"{d.moved_to}, never restored.")
  if state is None:
    state = fresh
  state = parallel.replicate(state, run.mesh)
  start = int(state.step)
  if start:
    print(f"Resuming from step {start} in {run.workdir}"
          + (f" (fell back past {len(damaged)} damaged checkpoint(s))"
             if damaged else ""))
    versions = run.record.version_changes() if run.record.exists else {}
    if versions:
      print("Warning: this run was recorded under other software ("
            + ", ".join(f"{k} {a} then, {b} now"
                        for k, (a, b) in versions.items())
            + "); the resumed numbers may differ from an uninterrupted "
            "run's in the last digits.")
  if start > run.config.num_steps:
    print(f"Warning: the checkpoint is at step {start}, past "
          f"config.num_steps={run.config.num_steps}; a run cannot be "
          f"shortened, so nothing is trained and the final metrics are step "
          f"{start}'s. Use a new --workdir for a shorter run.")
  return state


def _loop(run: _Run, state: TrainState, start: int, end: int, train_chunk,
          train_x: Array, metric_writer: writers.MetricWriter
          ) -> tuple[TrainState, int, int, bool]:
  """Steps start..end in chunks, each logged, evaluated and checkpointed when
  due. Returns (state, step, the last saved step, whether a stop came)."""
  config = run.config
  evaluation_key = f"evaluation:{run.exp.spec.name}"
  if evaluation_key not in run.programs:  # one compile per estimator
    run.programs[evaluation_key] = _make_evaluation(run)
  evaluate_all = run.programs[evaluation_key]
  bar = tqdm(total=end - start, desc=f"{config.estimator}", unit="step",
             dynamic_ncols=True, disable=not config.progress_bar)
  tic, step, saved = time.perf_counter(), start, start
  stopping = False  # a signal reached this process (or another one)
  while step < end:
    run.check_workdir()  # raises if it was deleted
    stopping = parallel.any_process(run.stop.requested())
    if stopping:
      break
    n = min(config.steps_per_call, end - step)
    indices = batch_indices(config.seed, run.exp.dataset.train.shape[0],
                            config.batch_size, step, n)
    state, metrics = train_chunk(
        state, parallel.replicate(indices, run.mesh), train_x)
    metrics = jax.device_get(metrics)
    stopping = parallel.any_process(run.stop.requested())
    _check_progress(metrics, float(state.monitor.initial_elbo), step, config,
                    run.ckpt, run.workdir)
    step += n
    row = _train_row(run, state, metrics, step, n, time.perf_counter() - tic)
    tic = time.perf_counter()
    if (step % config.eval_every == 0 or step == config.num_steps) and (
        not stopping):
      row.update(evaluate_all(state, step))
      tic = time.perf_counter()
    metric_writer.write(row)
    bar.update(n)
    bar.set_postfix(elbo=f"{row['train_elbo']:.2f}")
    if (step % config.checkpoint_every == 0 or step == end
        or stopping):
      _save(run, step, state)
      metric_writer.flush()
      saved = step
  bar.close()
  return state, step, saved, stopping


def _save(run: _Run, step: int, state: TrainState) -> None:
  """Saves a checkpoint of `state` at `step`.

  Raises:
    rebar_jax.utils.runs.WorkdirError: the workdir was deleted before or
      while the checkpoint was written (orbax then fails on its vanished
      files, with an error of its own).
  """
  run.check_workdir()
  try:
    run.ckpt.save(step, state)
  except Exception as e:  # pylint: disable=broad-except
    if not checkpoints.is_disk_full(e):
      _check_not_deleted(run)
    raise


def _check_not_deleted(run: _Run, wait: float = 1.0) -> None:
  """After a failed write: raises WorkdirError if the workdir is deleted or
  being deleted. An `rm -rf` under way removes the files before the
  directory (given `wait` seconds), and a directory that orbax recreated
  under it can keep the workdir from going: a workdir without its run.json
  counts as deleted."""
  deadline = time.monotonic() + wait
  while True:
    run.check_workdir()
    if not os.path.exists(os.path.join(run.workdir, runs.RECORD_FILE)):
      raise runs.workdir_gone(run.workdir)
    if time.monotonic() >= deadline:
      return
    time.sleep(0.05)


def _train_row(run: _Run, state: TrainState, metrics: dict[str, np.ndarray],
               step: int, n: int, elapsed: float) -> dict[str, Any]:
  """The metrics row of a chunk of n steps ending at `step`."""
  row = {"step": step, "train_elbo": float(np.mean(metrics["elbo"])),
         **({f"train_iw{run.config.iw_samples}": float(np.mean(
             metrics["iw_bound"]))} if "iw_bound" in metrics else {}),
         "estimator_loss": float(np.mean(metrics["estimator_loss"])),
         "steps_per_sec": n / elapsed}
  row.update(run.exp.spec.summary(jax.device_get(state.estimator.params)))
  return row


def _make_evaluation(run: _Run) -> Callable[[TrainState, int],
                                             dict[str, float]]:
  """(state, step) -> the validation and test bounds and, with
  config.diagnostic_draws > 1, the gradient diagnostics."""
  exp, config = run.exp, run.config
  diagnose = diagnostics.make_diagnostics(
      exp.model, exp.spec, config.diagnostic_draws, config.eval_num_samples)
  x_diag = binarized(exp.dataset.train[:config.batch_size], exp.dataset,
                     config.eval_seed)
  x_many = binarized(exp.dataset.valid[:1000], exp.dataset, config.eval_seed)

  def evaluate_all(state: TrainState, step: int) -> dict[str, float]:
    row = {}
    for split in ("valid", "test"):
      row.update(evaluate(exp, parallel.local(state.params), config, split))
    if config.diagnostic_draws > 1:
      row.update({name: float(v) for name, v in diagnose(
          *parallel.local((state.params, state.estimator)), x_diag, x_many,
          jax.random.key(config.eval_seed), step).items()})
    return row

  return evaluate_all


def _final_metrics(run: _Run, state: TrainState, rows: list[dict[str, Any]]
                   ) -> dict[str, Any]:
  """A finished run's final metrics (after its step), written to
  final_metrics.json with the curves in curves.png."""
  config = run.config
  final: dict[str, Any] = {
      "step": int(state.step),
      "train_elbo_last_1000_steps": recent_train_elbo(state)}
  evaluated = {key: v for key, v in (rows[-1] if rows else {}).items()
               if key.startswith(("valid_", "test_"))}
  if rows and rows[-1]["step"] == int(state.step) and evaluated:
    final.update(evaluated)  # the loop's last row evaluated these params
  else:
    for split in ("valid", "test"):
      final.update(evaluate(run.exp, parallel.local(state.params), config,
                            split))
  final["config_sha256"] = config_digest(config)
  final["data_sha256"] = run.data_sha256
  changed_at = [h["step"] for h in (run.record.data or {}).get("history", [])
                if h.get("changes")]
  if changed_at:
    final["config_changed_at_steps"] = changed_at
  runs.write_atomic(os.path.join(run.workdir, "final_metrics.json"),
                    json.dumps(final, indent=2))
  plots.plot_curves(rows, os.path.join(run.workdir, "curves.png"))
  return final


def _check_progress(metrics: dict[str, np.ndarray], initial_elbo: float,
                    step: int, config: ml_collections.ConfigDict,
                    ckpt: checkpoints.Checkpointer, workdir: str) -> None:
  """Raises TrainingStopped for a non-finite or diverged chunk of steps."""
  last = ckpt.latest_step()
  keep = (f"the last checkpoint (step {last}) in {workdir}/checkpoints is "
          "kept" if last is not None else "no checkpoint was written yet")
  if not np.all(metrics["finite"]):
    bad = step + int(np.argmin(metrics["finite"]))
    raise errors.TrainingStopped(
        f"Non-finite ELBO or gradient at step {bad} (a step's non-finite "
        "gradient shows in the next step's ELBO, or in the parameters at a "
        f"chunk's end) with estimator "
        f"{config.estimator!r}; {keep}. Try a lower learning_rate or "
        "another estimator.")
  chunk_elbo = float(np.mean(metrics["elbo"]))
  if chunk_elbo < initial_elbo - config.divergence_threshold:
    end = step + len(metrics["elbo"])
    raise errors.TrainingStopped(
        f"Diverged: the mean training ELBO of steps {step}..{end} is "
        f"{chunk_elbo:.4g}, more than config.divergence_threshold="
        f"{config.divergence_threshold:g} nats below its value at "
        f"initialisation ({initial_elbo:.4g}), with estimator "
        f"{config.estimator!r} and learning_rate={config.learning_rate:g}; "
        f"{keep}. Try a lower learning_rate or another estimator.")


if __name__ == "__main__":
  from rebar_jax import cli  # pylint: disable=g-import-not-at-top
  cli.define_flags()
  flags.adopt_module_key_flags(cli)  # --help lists them
  app.run(cli.main, flags_parser=cli.parse_flags)
