r"""Sweeps over config fields on Ray Tune: each trial is a normal training run.

The library behind scripts/sweep.py:

    python scripts/sweep.py --config=configs/sbn_linear.py \
        --sweep_dir=sweeps/lr --grid=estimator=nvil,disarm \
        --grid=learning_rate=1e-3,3e-4
    python scripts/sweep.py --sweep_dir=sweeps/lr --status

The grid is the product of the `--grid=field=v1,v2,...` lists (values parsed
as the type of the base config's field). Every trial is
`rebar_jax.train.train_and_evaluate(config, workdir)` in its own workdir,
`<sweep_dir>/trials/<field=value,...>`, so it has every guarantee of a single
run: exact resume, identity checks, verified checkpoints.

What Ray Tune does (https://docs.ray.io/en/latest/tune/): it queues the
trials and places them, `--cpus_per_trial` cores each (one per core by
default) on the local machine or on the cluster named by `--address`; it
retries a trial whose worker dies (`--max_failures` times), and the retry
resumes from the trial's own checkpoint (a trial that diverged or whose
config or data are bad is not run again: its retries report the failure at
once); on Ctrl-C the running trials save a checkpoint and stop; it records
the sweep's state in `<sweep_dir>/tune`, so the same command after an
interruption resumes the sweep without repeating finished trials.
`--requeue_failed` runs the trials that failed for good again (each resumes
from its checkpoint).

What the sweep adds: `<sweep_dir>/sweep.json` fixes the sweep's base config
and grid (the same command with anything else is refused, naming the
differences), `--status` lists each trial as queued, running, interrupted,
failed or finished with its step, and results.md / results.csv are tables
read from the trials' own final_metrics.json, each checked against its
trial's config digest; with a `learning_rate` axis, the learning rate with the
best validation ELBO (mean over seeds) is chosen per setting.

On several machines: `ray start --head` on one, `ray start --address=HEAD:6379`
on the others, then the sweep with `--address=HEAD:6379` and a `--sweep_dir`
on a file system every machine mounts at the same path (README, "Sweeps").
"""
import csv
import dataclasses
import io
import itertools
import json
import logging
import os
import signal
import threading
import time
from typing import Any, NoReturn, Optional, Sequence

import ml_collections
import numpy as np

from rebar_jax import errors
from rebar_jax.utils import checkpoints
from rebar_jax.utils import runs

MANIFEST = "sweep.json"
TRIALS = "trials"
TUNE = "tune"
# Written by the driver on Ctrl-C: the running trials save a checkpoint and
# stop; removed when the sweep runs again.
STOP_FILE = "STOP"
# Written in a trial's workdir when it failed in a way a retry cannot fix
# (divergence, a bad config or data): Tune's retries report it at once.
FAILED_FILE = "failed.json"
# Per-trial XLA CPU threading: a trial that owns one core runs XLA on one
# thread, so concurrent trials do not fight over the cores (Eigen's pool and
# XLA's intra-op pool default to every core of the machine).
ONE_THREAD_XLA = ("--xla_cpu_multi_thread_eigen=false "
                  "intra_op_parallelism_threads=1")


class SweepError(ValueError):
  """A sweep that cannot run as asked; the message names the fix."""


# --- the grid -------------------------------------------------------------


def _parse_value(field: str, text: str, like: Any) -> Any:
  """`text` as the type of the base config's value `like`."""
  text = text.strip()
  try:
    if isinstance(like, bool):
      if text.lower() not in ("true", "false"):
        raise ValueError
      return text.lower() == "true"
    if isinstance(like, int):
      return int(text)
    if isinstance(like, float):
      return float(text)
  except ValueError:
    raise SweepError(
        f"--grid={field}=...: {text!r} is not a {type(like).__name__}, the "
        f"type of config.{field} ({like!r}).") from None
  if isinstance(like, str):
    return text
  raise SweepError(f"--grid: config.{field} is a {type(like).__name__}; only "
                   "int, float, bool and str fields can be swept.")


def parse_grid(specs: Sequence[str], config: ml_collections.ConfigDict
               ) -> dict[str, list[Any]]:
  """`["field=v1,v2", ...]` -> {field: [v1, v2]}, in the order given.

  Raises:
    SweepError: a malformed spec, an unknown or repeated field, no values, or
      a value that is not of the field's type.
  """
  grid = {}
  for spec in specs:
    field, sep, values = spec.partition("=")
    field = field.strip()
    if not sep or not field or not values.strip():
      raise SweepError(f"--grid={spec!r}: expected field=value1,value2,...")
    if field not in config:
      raise SweepError(f"--grid={spec!r}: the config has no field {field!r}.")
    if field in grid:
      raise SweepError(f"--grid: {field!r} is given twice; list all its "
                       "values in one --grid.")
    parsed = [_parse_value(field, v, config[field])
              for v in values.split(",")]
    if len(set(map(repr, parsed))) != len(parsed):
      raise SweepError(f"--grid={spec!r} repeats a value.")
    names: dict[str, Any] = {}
    for value in parsed:  # each trial's workdir is named by its values
      name = trial_name({field: value})
      if name in names:
        raise SweepError(
            f"--grid={spec!r}: {names[name]!r} and {value!r} both name the "
            f"trial {name!r} (6 significant digits), so they would share one "
            "workdir; use values that differ in their first 6 digits.")
      names[name] = value
    grid[field] = parsed
  return grid


def expand(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
  """The trials: one dict of field values per point of the product."""
  fields = list(grid)
  return [dict(zip(fields, values))
          for values in itertools.product(*grid.values())]


def trial_name(params: dict[str, Any]) -> str:
  """`estimator=disarm,learning_rate=0.001`: the trial's workdir name."""
  if not params:
    return "base"
  return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                  for k, v in params.items()).replace("/", "_").replace(
                      ":", "-")


def trial_config(base: ml_collections.ConfigDict, params: dict[str, Any]
                 ) -> ml_collections.ConfigDict:
  """The base config with the trial's values (a copy; the base is unchanged)."""
  config = ml_collections.ConfigDict(base.to_dict())
  for field, value in params.items():
    config[field] = value
  config.progress_bar = False  # Tune reports progress for the sweep
  return config


# --- the sweep's identity -------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A sweep directory's fixed definition: base config and grid."""
  sweep_dir: str
  base: ml_collections.ConfigDict
  grid: dict[str, list[Any]]

  @property
  def trials(self) -> list[dict[str, Any]]:
    return expand(self.grid)

  def workdir(self, params: dict[str, Any]) -> str:
    return os.path.join(self.sweep_dir, TRIALS, trial_name(params))

  def manifest(self) -> dict[str, Any]:
    return {"base_config": json.loads(self.base.to_json_best_effort()),
            "grid": self.grid,
            "trials": [trial_name(p) for p in self.trials]}

  def write_or_check_manifest(self) -> None:
    """Writes sweep.json, or refuses a sweep_dir that holds another sweep."""
    path = os.path.join(self.sweep_dir, MANIFEST)
    new = self.manifest()
    if os.path.exists(path):
      old = _read_manifest(path)
      diffs = [f"  grid: {old.get('grid')!r} there, {new['grid']!r} now"] if (
          old.get("grid") != new["grid"]) else []
      old_base = old.get("base_config", {})
      for name in sorted(set(old_base) | set(new["base_config"])):
        a = old_base.get(name, "<absent>")
        b = new["base_config"].get(name, "<absent>")
        if a != b:
          diffs.append(f"  config.{name}: {a!r} there, {b!r} now")
      if diffs:
        raise SweepError(
            f"{self.sweep_dir} holds another sweep; continuing it would mix "
            "trials of two definitions. Differences:\n" + "\n".join(diffs) +
            "\nUse a new --sweep_dir, or the command that started this one.")
      return
    os.makedirs(self.sweep_dir, exist_ok=True)
    runs.write_atomic(path, json.dumps(new, indent=2))


def load(sweep_dir: str) -> Sweep:
  """The sweep recorded in `sweep_dir` (for --status and the tables)."""
  path = os.path.join(sweep_dir, MANIFEST)
  if not os.path.exists(path):
    raise SweepError(f"{sweep_dir} holds no sweep ({MANIFEST} is missing); "
                     "start one with --config and --grid.")
  manifest = _read_manifest(path)
  return Sweep(sweep_dir, ml_collections.ConfigDict(manifest["base_config"]),
               manifest["grid"])


def _read_manifest(path: str) -> dict[str, Any]:
  """sweep.json, checked; SweepError naming the file if it is damaged."""
  try:
    with open(path) as fh:
      manifest = json.load(fh)
    if not (isinstance(manifest, dict)
            and isinstance(manifest.get("base_config"), dict)
            and isinstance(manifest.get("grid"), dict)):
      raise ValueError("no base_config and grid objects")
  except (OSError, ValueError) as e:
    raise SweepError(
        f"{path} is unreadable ({type(e).__name__}: {e}); it defines the "
        f"sweep: move it away (mv {path} {path}.damaged) and rerun the "
        "command that started the sweep, which writes it again (the trials' "
        "workdirs are kept).") from e
  return manifest


def check_trials(sweep: Sweep) -> None:
  """Builds every trial's data, model and estimator, as its run would, so a
  bad value fails here, before Ray starts (each data set is loaded once).

  Raises:
    rebar_jax.errors.ConfigError (naming the trial), or the data's errors.
  """
  # pylint: disable-next=g-import-not-at-top
  from rebar_jax import config_checks
  from rebar_jax import train  # pylint: disable=g-import-not-at-top
  datasets = {}
  for params in sweep.trials:
    config = trial_config(sweep.base, params)
    try:
      config_checks.check_config(config)
      key = (config.dataset, config.data_source, config.data_dir,
             config.seed)
      if key not in datasets:
        datasets[key] = train.load_data(config)
      train.build(config, datasets[key])
    except errors.ConfigError as e:
      raise errors.ConfigError(f"trial {trial_name(params)}: {e}") from e


# --- running it on Ray Tune -----------------------------------------------


def _trainable(params: dict[str, Any], sweep: Sweep) -> None:
  """One trial, in a Ray worker: a normal training run in its own workdir."""
  from ray import tune  # pylint: disable=g-import-not-at-top

  from rebar_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from rebar_jax import train  # pylint: disable=g-import-not-at-top
  params = {k: params[k] for k in sweep.grid}  # the grid's order
  config, workdir = trial_config(sweep.base, params), sweep.workdir(params)
  stop_file = os.path.join(sweep.sweep_dir, STOP_FILE)
  _raise_if_failed_for_good(workdir, train.config_digest(config))
  # A trial can finish its files and be stopped before Tune hears of it (an
  # interrupted sweep); its retry only reports them, running nothing.
  final = finished_metrics(sweep, params)
  if final is None:
    if os.path.exists(stop_file):
      _wait_to_be_stopped()
    try:
      final = train.train_and_evaluate(
          config, workdir, stop_requested=lambda: os.path.exists(stop_file))
    except errors.Interrupted:
      _wait_to_be_stopped()  # checkpointed; Tune stops it unfinished
    except (errors.TrainingStopped, errors.ConfigError,
            data_lib.DataError) as e:
      os.makedirs(workdir, exist_ok=True)
      runs.write_atomic(os.path.join(workdir, FAILED_FILE), json.dumps(
          {"error": f"{type(e).__name__}: {e}",
           "config_sha256": train.config_digest(config)}))
      raise
  tune.report({k: v for k, v in final.items()
               if isinstance(v, (int, float, str))})


class FailedForGood(RuntimeError):
  """A retry of a trial that failed in a way a retry cannot fix."""


def _raise_if_failed_for_good(workdir: str, digest: str) -> None:
  try:
    with open(os.path.join(workdir, FAILED_FILE)) as fh:
      failed = json.load(fh)
  except (OSError, ValueError):
    return
  if failed.get("config_sha256") == digest:
    raise FailedForGood(f"not retried, a retry would fail the same way: "
                        f"{failed.get('error')}")


def _wait_to_be_stopped() -> NoReturn:
  """Blocks the trial's thread until Tune stops (kills) its worker."""
  while True:
    time.sleep(1.0)


def _import_tune():
  try:
    import ray  # pylint: disable=g-import-not-at-top
    from ray import tune  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"Sweeps run on Ray Tune, which is not installed ({e}); "
        "pip install 'rebar_jax[sweep]' (or pip install 'ray[tune]').") from e
  return ray, tune


def run(sweep: Sweep, *, address: Optional[str] = None,
        num_cpus: Optional[int] = None, cpus_per_trial: int = 1,
        max_failures: int = 2, requeue_failed: bool = False,
        verbose: int = 1) -> dict[str, int]:
  """Runs (or resumes) the sweep's unfinished trials on Ray Tune.

  Args:
    sweep: the definition; its manifest must already be written or checked.
    address: a Ray cluster to join ("HOST:6379", "auto"); None starts a new
      local Ray instance with `num_cpus` cores (default: all of this
      machine's), never joining a cluster that `ray start` left running.
    cpus_per_trial: cores Tune reserves per trial; with 1, each trial's XLA
      runs on one thread.
    max_failures: retries of a trial whose worker fails; each resumes from
      the trial's newest intact checkpoint.
    requeue_failed: run again the trials that failed for good in an earlier
      invocation.
    verbose: Tune's console output (0 silent, 1 status table).

  Returns:
    {"finished": n, "failed": n, "unfinished": n} over the sweep's trials
    (`status`): trials stay unfinished when the sweep is interrupted (on
    SIGINT the running trials save a checkpoint and stop, then Tune saves
    its state and returns: `_StopTrialsOnSigint`).
  """
  ray, tune = _import_tune()
  # Trials write absolute paths, and keep the driver's working directory
  # (Tune would move them into its own trial directories).
  sweep = dataclasses.replace(sweep, sweep_dir=os.path.abspath(sweep.sweep_dir))
  env = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "PYTHONPATH": os.pathsep.join(
      p for p in (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                  os.environ.get("PYTHONPATH")) if p)}
  if cpus_per_trial == 1:
    env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " +
                        ONE_THREAD_XLA).strip()
  for name in ("JAX_COMPILATION_CACHE_DIR",
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
               "REBAR_JAX_DATA_DIR"):
    if name in os.environ:
      env[name] = os.environ[name]
  # Tune's notes on trials it stopped (no result file yet) are not errors.
  logging.getLogger("ray.tune").setLevel(logging.ERROR)
  stop_file = os.path.join(sweep.sweep_dir, STOP_FILE)
  if os.path.exists(stop_file):
    os.remove(stop_file)
  if requeue_failed:
    for params in sweep.trials:
      failed_file = os.path.join(sweep.workdir(params), FAILED_FILE)
      if os.path.exists(failed_file):
        os.remove(failed_file)
  ray.init(address=address or "local", num_cpus=None if address else num_cpus,
           include_dashboard=False, log_to_driver=verbose > 1,
           runtime_env={"env_vars": env})
  fitted = threading.Event()
  try:
    with _StopTrialsOnSigint(sweep, fitted):
      _fit(sweep, tune, cpus_per_trial, max_failures, requeue_failed,
           verbose)
  finally:
    fitted.set()
    ray.shutdown()
  states = [row["state"] for row in status(sweep)]
  finished, failed = states.count("finished"), states.count("failed")
  return {"finished": finished, "failed": failed,
          "unfinished": len(states) - finished - failed}


class _StopTrialsOnSigint:
  """The driver's Ctrl-C: the running trials checkpoint and stop, then Tune.

  The first SIGINT writes `<sweep_dir>/STOP`, which every trial polls between
  chunks of steps (it saves a checkpoint and stops, as on SIGTERM); once no
  trial holds its workdir, Tune is told to stop (SIGUSR1, its own signal for
  it) and records the stopped trials as unfinished, so the same command
  resumes them. A second SIGINT tells Tune at once (the trials lose their
  steps since their last checkpoint). Installed only in the main thread.
  """

  def __init__(self, sweep: Sweep, fitted: threading.Event):
    self.sweep, self.fitted = sweep, fitted
    self.stopping = False
    self._old: dict[int, Any] = {}
    self._saved = threading.Event()

  def _handle(self, signum, frame):
    del signum, frame
    if self.stopping:
      self._saved.set()
      os.kill(os.getpid(), signal.SIGUSR1)
      return
    self.stopping = True
    print("Stopping the sweep: each running trial saves a checkpoint and "
          "stops (Ctrl-C again to stop at once, losing each trial's steps "
          "since its last checkpoint).", flush=True)
    with open(os.path.join(self.sweep.sweep_dir, STOP_FILE), "w"):
      pass
    threading.Thread(target=self._stop_tune, daemon=True).start()

  def _stop_tune(self):
    deadline = time.monotonic() + 600
    while not self.fitted.is_set():
      if self._saved.is_set() or time.monotonic() > deadline or not any(
          runs.is_locked(self.sweep.workdir(p)) for p in self.sweep.trials):
        self._saved.set()
        os.kill(os.getpid(), signal.SIGUSR1)  # Tune's stop, once installed
      time.sleep(1.0)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
      self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)
      # Until Tune installs its handler, SIGUSR1 must not kill the driver.
      self._old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1,
                                                lambda *_: None)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._old.items():
      signal.signal(signum, handler)
    os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)


def _fit(sweep: Sweep, tune, cpus_per_trial: int, max_failures: int,
         requeue_failed: bool, verbose: int) -> None:
  """Creates or restores the Tune experiment and runs it."""
  path = os.path.join(sweep.sweep_dir, TUNE)
  trainable = tune.with_resources(
      tune.with_parameters(_trainable, sweep=sweep), {"cpu": cpus_per_trial})
  if tune.Tuner.can_restore(path):
    tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True,
                               restart_errored=requeue_failed)
  else:
    tuner = tune.Tuner(
        trainable,
        param_space={k: tune.grid_search(v) for k, v in sweep.grid.items()},
        tune_config=tune.TuneConfig(reuse_actors=False),
        run_config=tune.RunConfig(
            name=TUNE, storage_path=sweep.sweep_dir, verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=max_failures)))
  tuner.fit()


# --- status and tables, from the files -------------------------------------


def _tune_errors(sweep: Sweep) -> dict[str, str]:
  """trial name -> the last line of its error, for trials Tune gave up on."""
  path = os.path.join(sweep.sweep_dir, TUNE)
  if not os.path.isdir(path):
    return {}
  _, tune = _import_tune()
  try:
    analysis = tune.ExperimentAnalysis(os.path.abspath(path))
  except Exception:  # pylint: disable=broad-except
    return {}  # no state written yet
  errors = {}
  for trial in analysis.trials:
    if trial.status == "ERROR":
      params = {k: trial.config[k] for k in sweep.grid if k in trial.config}
      message = "error"
      error_file = os.path.join(trial.path or "", "error.txt")
      if os.path.exists(error_file):
        with open(error_file) as fh:
          lines = [l for l in fh.read().splitlines() if l.strip()]
        message = lines[-1] if lines else message
      errors[trial_name(params)] = message
  return errors


def status(sweep: Sweep) -> list[dict[str, Any]]:
  """Each trial's state, from its workdir and Tune's record.

  States: finished (final_metrics.json at the config's num_steps), running
  (a live process holds its workdir lock), failed (Tune gave up on it),
  interrupted (checkpoints, no process), queued (nothing yet).
  """
  errors = _tune_errors(sweep)
  rows = []
  for params in sweep.trials:
    name, workdir = trial_name(params), sweep.workdir(params)
    num_steps = trial_config(sweep.base, params).num_steps
    step = checkpoints.Checkpointer(
        os.path.join(workdir, "checkpoints")).latest_step()
    final = _final_metrics(workdir)
    if final is not None and final.get("step") == num_steps:
      state = "finished"
    elif runs.is_locked(workdir):
      state = "running"
    elif name in errors:
      state = "failed"
    elif step is not None:
      state = "interrupted"
    else:
      state = "queued"
    rows.append({"trial": name, "state": state, "step": step or 0,
                 "num_steps": num_steps, "error": errors.get(name, "")
                 if state == "failed" else ""})
  return rows


def status_table(rows: list[dict[str, Any]]) -> str:
  counts = {s: sum(r["state"] == s for r in rows) for s in
            ("queued", "running", "interrupted", "failed", "finished")}
  lines = [", ".join(f"{n} {s}" for s, n in counts.items()),
           "| trial | state | step | error |", "| --- | --- | --- | --- |"]
  lines += [f"| {r['trial']} | {r['state']} | {r['step']}/{r['num_steps']} "
            f"| {r['error']} |" for r in rows]
  return "\n".join(lines)


def _final_metrics(workdir: str) -> Optional[dict[str, Any]]:
  path = os.path.join(workdir, "final_metrics.json")
  if not os.path.exists(path):
    return None
  with open(path) as fh:
    return json.load(fh)


def finished_metrics(sweep: Sweep, params: dict[str, Any]
                     ) -> Optional[dict[str, Any]]:
  """The trial's final metrics if it finished, else None.

  Raises:
    SweepError: its final_metrics.json belongs to another config (its
      config_sha256 differs from the trial's).
  """
  from rebar_jax import train  # pylint: disable=g-import-not-at-top
  config = trial_config(sweep.base, params)
  final = _final_metrics(sweep.workdir(params))
  if final is None or final.get("step") != config.num_steps:
    return None
  if final.get("config_sha256") != train.config_digest(config):
    raise SweepError(
        f"{sweep.workdir(params)}/final_metrics.json was written by another "
        "configuration than this trial's; remove that workdir and rerun the "
        "sweep to train the trial again.")
  return final


def results(sweep: Sweep) -> list[dict[str, Any]]:
  """One row per finished trial: its grid values and final metrics."""
  rows = []
  for params in sweep.trials:
    final = finished_metrics(sweep, params)
    if final is not None:
      rows.append({**params, **{k: v for k, v in final.items()
                                if k not in ("config_sha256", "data_sha256")}})
  return rows


def _fmt(v: Any) -> str:
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def tables(sweep: Sweep, rows: list[dict[str, Any]], *, select_metric: str,
           report_prefix: str) -> tuple[str, str]:
  """(Markdown, CSV) of the finished trials; Markdown adds the lr choice.

  select_metric: the final metric that chooses the learning rate (higher is
    better; scripts/sweep.py's default is valid_elbo).
  report_prefix: the final metrics shown beside the choice are those whose
    name starts with it (scripts/sweep.py's default: test_).
  """
  metrics = sorted({k for r in rows for k in r if k not in sweep.grid})
  columns = list(sweep.grid) + metrics
  out = io.StringIO()
  writer = csv.DictWriter(out, columns)
  writer.writeheader()
  writer.writerows(rows)
  md = [f"{len(rows)} of {len(sweep.trials)} trials finished "
        f"(sweep {sweep.sweep_dir}).", "",
        "| " + " | ".join(columns) + " |",
        "|" + " --- |" * len(columns)]
  md += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |"
         for r in rows]
  if "learning_rate" in sweep.grid and rows and select_metric in rows[0]:
    md += [""] + best_learning_rates(sweep, rows, select_metric,
                                     report_prefix)
  return "\n".join(md) + "\n", out.getvalue()


def choose_learning_rate(rows: list[dict[str, Any]], num_seeds: int,
                         metric: str
                         ) -> Optional[tuple[float, list[dict[str, Any]]]]:
  """(lr, its rows) with the best (highest) `metric` averaged over seeds.

  `rows` are one setting's finished trials; only learning rates with all
  `num_seeds` seeds finished count, so a choice never rests on part of the
  seeds. None when no learning rate is complete.
  """
  by_lr: dict[float, list] = {}
  for r in rows:
    by_lr.setdefault(r["learning_rate"], []).append(r)
  complete = {lr: rs for lr, rs in by_lr.items() if len(rs) == num_seeds}
  if not complete:
    return None
  return max(complete.items(),
             key=lambda kv: np.mean([r[metric] for r in kv[1]]))


def best_learning_rates(sweep: Sweep, rows: list[dict[str, Any]],
                        select_metric: str, report_prefix: str) -> list[str]:
  """Per setting of the other fields: `choose_learning_rate`'s choice by
  `select_metric`, with the metrics named `report_prefix`... beside it."""
  keys = [k for k in sweep.grid if k not in ("learning_rate", "seed")]
  seeds = len(sweep.grid.get("seed", [None]))
  groups: dict[tuple, list] = {}
  for r in rows:
    groups.setdefault(tuple(r[k] for k in keys), []).append(r)
  tests = sorted({k for r in rows for k in r if k.startswith(report_prefix)})
  by = ("validation ELBO" if select_metric == "valid_elbo"
        else select_metric)
  md = [f"Best learning rate by {by} (mean over {seeds} seed(s)):", "",
        "| " + " | ".join(keys + ["learning_rate", select_metric] + tests) +
        " |", "|" + " --- |" * (len(keys) + 2 + len(tests))]
  for setting, group in groups.items():
    chosen = choose_learning_rate(group, seeds, select_metric)
    if chosen is None:
      continue
    lr, best = chosen
    md.append("| " + " | ".join(
        [str(s) for s in setting] + [f"{lr:g}", _fmt(float(np.mean(
            [r[select_metric] for r in best])))] +
        [_fmt(float(np.mean([r[t] for r in best]))) for t in tests]) + " |")
  return md


def write_tables(sweep: Sweep, *, select_metric: str,
                 report_prefix: str) -> str:
  """Writes results.md and results.csv in the sweep dir (`tables`); returns
  the md."""
  md, table = tables(sweep, results(sweep), select_metric=select_metric,
                     report_prefix=report_prefix)
  with open(os.path.join(sweep.sweep_dir, "results.md"), "w") as fh:
    fh.write(md)
  with open(os.path.join(sweep.sweep_dir, "results.csv"), "w") as fh:
    fh.write(table)
  return md
