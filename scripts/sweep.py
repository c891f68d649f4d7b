r"""Sweeps over config fields on Ray Tune; each trial a normal training run.

  # 2 estimators x 2 learning rates on this machine, trials one per core
  python scripts/sweep.py --config=configs/sbn_linear.py \
      --sweep_dir=sweeps/lr --grid=estimator=nvil,disarm \
      --grid=learning_rate=1e-3,3e-4 --config.num_steps=20000

  # where it stands (queued, running, interrupted, failed, finished)
  python scripts/sweep.py --sweep_dir=sweeps/lr --status

Ctrl-C stops the sweep: the running trials save a checkpoint and stop (a
second Ctrl-C stops them at once). The same command again resumes an
interrupted sweep (finished trials are not repeated; running ones resume from
their checkpoints); `--requeue_failed` also runs the trials that failed for
good again. `--address=HEAD:6379` joins
a Ray cluster (README, "Sweeps"). Outputs in --sweep_dir: sweep.json (the
definition), trials/<field=value,...>/ (each trial's workdir, as
`python -m rebar_jax.train` writes it), tune/ (Ray Tune's state), and
results.md / results.csv (the finished trials' final metrics; with a
learning_rate axis, the best learning rate by validation ELBO). See
rebar_jax/sweep.py.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rebar_jax import cli  # pylint: disable=g-import-not-at-top
from rebar_jax import sweep as sweep_lib  # pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Base config file (its --config.field overrides apply to "
    "every trial).", lock_config=True)
_SWEEP_DIR = flags.DEFINE_string(
    "sweep_dir", None, "The sweep's directory (resumed if it holds one).",
    required=True)
_GRID = flags.DEFINE_multi_string(
    "grid", [], "field=value1,value2,...: one axis of the grid; repeat the "
    "flag for more axes.")
_STATUS = flags.DEFINE_bool("status", False,
                            "List the trials' states and exit.")
_ADDRESS = flags.DEFINE_string(
    "address", None, "A Ray cluster to join (HOST:6379, or auto); default: a "
    "local Ray instance on this machine.")
_NUM_CPUS = flags.DEFINE_integer(
    "num_cpus", None, "Cores of the local Ray instance (default: all).")
_CPUS_PER_TRIAL = flags.DEFINE_integer("cpus_per_trial", 1,
                                       "Cores reserved per trial.")
_MAX_FAILURES = flags.DEFINE_integer(
    "max_failures", 2, "Retries of a trial whose worker fails; each resumes "
    "from the trial's checkpoint.")
_REQUEUE_FAILED = flags.DEFINE_bool(
    "requeue_failed", False, "Also run the trials that failed for good again.")
_SELECT_METRIC = flags.DEFINE_string(
    "select_metric", "valid_elbo", "The final metric (higher is better) that "
    "chooses the best learning rate in results.md.")
_REPORT_PREFIX = flags.DEFINE_string(
    "report_prefix", "test_", "results.md shows the final metrics whose "
    "names start with this beside each chosen learning rate.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # jax logs its backend probe at INFO; a refused grid is one line, as the
  # trainer's errors (Ray and Tune keep their own loggers).
  logging.set_verbosity(logging.WARNING)
  try:
    if _STATUS.value:
      print(sweep_lib.status_table(sweep_lib.status(
          sweep_lib.load(_SWEEP_DIR.value))))
      return
    config = _CONFIG.value
    if config is None or not _GRID.value:
      raise app.UsageError("--config and at least one --grid are required "
                           "(or --status).")
    grid = sweep_lib.parse_grid(_GRID.value, config)
    sweep = sweep_lib.Sweep(_SWEEP_DIR.value, config, grid)
    sweep_lib.check_trials(sweep)  # every trial's model and estimator
    sweep.write_or_check_manifest()
    print(f"Sweep {_SWEEP_DIR.value}: {len(sweep.trials)} trials ("
          + " x ".join(f"{len(v)} {k}" for k, v in grid.items()) + ")")
    counts = sweep_lib.run(
        sweep, address=_ADDRESS.value, num_cpus=_NUM_CPUS.value,
        cpus_per_trial=_CPUS_PER_TRIAL.value, max_failures=_MAX_FAILURES.value,
        requeue_failed=_REQUEUE_FAILED.value)
    print(sweep_lib.status_table(sweep_lib.status(sweep)))
    print(sweep_lib.write_tables(sweep, select_metric=_SELECT_METRIC.value,
                                 report_prefix=_REPORT_PREFIX.value))
  except (sweep_lib.SweepError,) + cli.USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  if counts["unfinished"]:
    print(f"Sweep interrupted with {counts['unfinished']} trial(s) "
          "unfinished; run the same command to resume it (finished trials "
          "are not repeated).")
    sys.exit(130)
  if counts["failed"]:
    print(f"error: {counts['failed']} trial(s) failed after "
          f"{_MAX_FAILURES.value} retries (their errors: --status); rerun "
          "with --requeue_failed to run them again.", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
