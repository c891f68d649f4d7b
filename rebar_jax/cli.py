"""The trainer's command line: flags, `main` and its one-line error exits.

`python -m rebar_jax.train --config=configs/sbn_mnist.py` runs `run` (see
`rebar_jax.train` for what a run does and guarantees). The other command lines
of the library (rebar_jax.advise, scripts/sweep.py) share `parse_flags` and
report `USER_ERRORS` the same way: one line, no traceback.
"""
import errno
import os
import signal
import sys
from typing import Any, NoReturn

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from rebar_jax import data as data_lib
from rebar_jax import errors
from rebar_jax import parallel
from rebar_jax import train
from rebar_jax.utils import checkpoints
from rebar_jax.utils import runs


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
USER_ERRORS = (errors.ConfigError, data_lib.DataError, FileNotFoundError,
               ImportError, runs.WorkdirError, checkpoints.CheckpointError,
               errors.TrainingStopped)


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


def _exit_now(code: int) -> NoReturn:
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
  config = f.config
  if config is None:
    raise app.UsageError("--config is required, e.g. "
                         "--config=configs/sbn_mnist.py")
  workdir = f.workdir or default_workdir(
      config_flags.get_config_filename(f["config"]), config)
  final = _train_or_exit(config, workdir, f.allow_config_change)
  lines = [f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}"
           for k, v in final.items()]
  print("Final metrics (" + workdir + "):\n  " + "\n  ".join(lines))


def _train_or_exit(config: ml_collections.ConfigDict, workdir: str,
                   allow_config_change: bool) -> dict[str, Any]:
  """`train.train_and_evaluate`'s final metrics, or an exit after one line
  saying why the run stopped and how to go on."""
  try:
    return train.train_and_evaluate(
        config, workdir, allow_config_change=allow_config_change)
  except errors.Interrupted as e:
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


def run() -> None:
  """The program: `python -m rebar_jax.train` (or `-m rebar_jax.cli`)."""
  define_flags()
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
