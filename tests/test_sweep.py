"""Sweeps (rebar_jax/sweep.py, scripts/sweep.py): the grid, the sweep's
identity, the status and tables from the trials' files, and one real sweep on
a local Ray instance that survives a killed worker and a whole interruption.
"""
import json
import os
import pathlib
import re
import signal
import socket
import subprocess

import ml_collections
import pytest

import user_shell
from configs import sbn_linear
from rebar_jax import errors
from rebar_jax import sweep as sweep_lib
from rebar_jax import train
from rebar_jax.utils import runs

# The README's sweep, as typed, shortened by step counts only.
README_SWEEP = ("python scripts/sweep.py --config=configs/sbn_linear.py "
                "--sweep_dir=sweeps/lr --grid=estimator=nvil,disarm "
                "--grid=learning_rate=1e-3,3e-4 --config.num_steps=20000")
README_STATUS = "python scripts/sweep.py --sweep_dir=sweeps/lr --status"
SHORT = ("--config.num_steps=2000 --config.eval_every=2000 "
         "--config.checkpoint_every=100")


def _base():
  return sbn_linear.get_config()


def test_grid_values_take_the_fields_types():
  grid = sweep_lib.parse_grid(
      ["estimator=nvil,disarm", "learning_rate=1e-3,3e-4", "seed=0,1",
       "nonlinear=true,false"], _base())
  assert grid == {"estimator": ["nvil", "disarm"],
                  "learning_rate": [1e-3, 3e-4], "seed": [0, 1],
                  "nonlinear": [True, False]}
  trials = sweep_lib.expand(grid)
  assert len(trials) == 16 and trials[0] == {
      "estimator": "nvil", "learning_rate": 1e-3, "seed": 0,
      "nonlinear": True}
  assert sweep_lib.trial_name(trials[1]) == (
      "estimator=nvil,learning_rate=0.001,seed=0,nonlinear=False")
  names = {sweep_lib.trial_name(t) for t in trials}
  assert len(names) == 16


@pytest.mark.parametrize("spec, message", [
    (["learning_rate"], "expected field=value1"),
    (["learning_rat=1e-3"], "no field 'learning_rat'"),
    (["seed=0,x"], "'x' is not a int"),
    (["nonlinear=yes"], "'yes' is not a bool"),
    (["seed=0", "seed=1"], "given twice"),
    (["seed=0,0"], "repeats a value"),
    (["relax_hidden=1,2"], "only int, float, bool and str"),
    (["learning_rate=1e-4,1.0000001e-4"],
     "0.0001 and 0.00010000001 both name the trial 'learning_rate=0.0001'"),
])
def test_bad_grids_are_refused_naming_the_fix(spec, message):
  with pytest.raises(sweep_lib.SweepError, match=message):
    sweep_lib.parse_grid(spec, _base())


def test_trial_config_leaves_the_base_alone():
  base = _base()
  config = sweep_lib.trial_config(base, {"learning_rate": 0.5, "seed": 3})
  assert (config.learning_rate, config.seed) == (0.5, 3)
  assert (base.learning_rate, base.seed) != (0.5, 3)
  assert train.config_digest(config) != train.config_digest(base)


def test_a_sweep_dir_holds_one_sweep(tmp_path):
  base = _base()
  grid = {"learning_rate": [1e-3, 3e-4]}
  sweep_lib.Sweep(str(tmp_path), base, grid).write_or_check_manifest()
  sweep_lib.Sweep(str(tmp_path), base, grid).write_or_check_manifest()
  loaded = sweep_lib.load(str(tmp_path))
  assert loaded.grid == grid and loaded.trials == sweep_lib.expand(grid)
  other = ml_collections.ConfigDict(base.to_dict())
  other.batch_size = 7
  with pytest.raises(sweep_lib.SweepError,
                     match=r"(?s)config.batch_size: 24 there, 7 now.*new "
                     "--sweep_dir"):
    sweep_lib.Sweep(str(tmp_path), other, grid).write_or_check_manifest()
  with pytest.raises(sweep_lib.SweepError, match="grid:"):
    sweep_lib.Sweep(str(tmp_path), base, {"learning_rate": [1e-3]}
                    ).write_or_check_manifest()
  with pytest.raises(sweep_lib.SweepError, match="holds no sweep"):
    sweep_lib.load(str(tmp_path / "nothing"))


def _finish(sweep, params, valid_elbo, digest=None):
  """Writes what a finished trial leaves: final_metrics.json."""
  workdir = pathlib.Path(sweep.workdir(params))
  workdir.mkdir(parents=True, exist_ok=True)
  config = sweep_lib.trial_config(sweep.base, params)
  (workdir / "final_metrics.json").write_text(json.dumps({
      "step": config.num_steps, "valid_elbo": valid_elbo,
      "test_iw100": valid_elbo + 1.0,
      "config_sha256": digest or train.config_digest(config),
      "data_sha256": "d"}))


def test_status_and_tables_come_from_the_trials_files(tmp_path):
  sweep = sweep_lib.Sweep(str(tmp_path), _base(), {
      "estimator": ["nvil", "disarm"], "learning_rate": [1e-3, 3e-4],
      "seed": [0, 1]})
  sweep.write_or_check_manifest()
  trials = sweep.trials
  # nvil: both seeds at both lrs; 3e-4 is better on average.
  for params, elbo in zip(trials[:4], (-100.0, -90.0, -95.0, -92.0)):
    _finish(sweep, params, elbo)
  # disarm at lr 1e-3: one seed finished, one running (its lock is held);
  # at 3e-4: one interrupted (a checkpoint, no process), one queued.
  _finish(sweep, trials[4], -80.0)
  running = pathlib.Path(sweep.workdir(trials[5]))
  running.mkdir(parents=True)
  interrupted = pathlib.Path(sweep.workdir(trials[6])) / "checkpoints" / "100"
  interrupted.mkdir(parents=True)
  with runs.WorkdirLock(str(running)):
    rows = sweep_lib.status(sweep)
  states = [r["state"] for r in rows]
  assert states == ["finished"] * 5 + ["running", "interrupted", "queued"]
  assert rows[6]["step"] == 100
  assert sweep_lib.status(sweep)[5]["state"] == "queued"  # lock released
  table = sweep_lib.status_table(rows)
  assert table.startswith("1 queued, 1 running, 1 interrupted, 0 failed, "
                          "5 finished")

  md, table_csv = sweep_lib.tables(sweep, sweep_lib.results(sweep),
                                   select_metric="valid_elbo",
                                   report_prefix="test_")
  assert md.startswith("5 of 8 trials finished")
  assert len(table_csv.strip().splitlines()) == 6
  best = md.split("Best learning rate")[1]
  # nvil: lr 3e-4 (mean -93.5 beats -95); disarm: no lr has both seeds.
  assert "| nvil | 0.0003 | -93.5 | -92.5 |" in best
  assert "disarm" not in best

  # A trial whose final metrics belong to another config is refused.
  _finish(sweep, trials[0], -100.0, digest="0" * 64)
  with pytest.raises(sweep_lib.SweepError, match="another configuration"):
    sweep_lib.results(sweep)


def test_a_torn_manifest_is_one_clear_error(tmp_path):
  sweep = sweep_lib.Sweep(str(tmp_path / "s"), _base(), {"seed": [0, 1]})
  sweep.write_or_check_manifest()
  path = tmp_path / "s" / sweep_lib.MANIFEST
  path.write_text(path.read_text()[:40])  # killed mid-write, or edited
  for use in (lambda: sweep_lib.load(sweep.sweep_dir),
              sweep.write_or_check_manifest):
    with pytest.raises(sweep_lib.SweepError,
                       match="sweep.json is unreadable .*: move it away " +
                       re.escape(f"(mv {path} {path}.damaged)") +
                       " and rerun the command"):
      use()
  # The advice works (issue 28: rerunning the starting command was refused
  # with the same advice).
  path.rename(f"{path}.damaged")
  sweep.write_or_check_manifest()
  assert sweep_lib.load(sweep.sweep_dir).grid == {"seed": [0, 1]}


def test_every_trial_is_built_before_anything_runs(tmp_path):
  base = _base()
  for grid, message in [
      ({"estimator": ["disarm", "nope"]},
       "trial estimator=nope: config.estimator='nope': Unknown estimator"),
      ({"iw_samples": [1, 5]},
       "trial iw_samples=5: config.estimator='[a-z_]+': iw_samples=5 is set"),
  ]:
    sweep = sweep_lib.Sweep(str(tmp_path / "s"), base, grid)
    with pytest.raises(errors.ConfigError, match=message):
      sweep_lib.check_trials(sweep)
  assert not (tmp_path / "s").exists()


def test_bad_sweep_commands_fail_before_ray_starts(tmp_path):
  clone = user_shell.user_dir(tmp_path)
  for extra, message in [
      ("--grid=learning_rat=1e-3", "no field 'learning_rat'"),
      ("--grid=learning_rate=-1", "learning_rate must be a finite number > 0"),
      ("--grid=estimator=nope", "Unknown estimator 'nope'"),
  ]:
    done = user_shell.run(
        f"python scripts/sweep.py --config=configs/sbn_linear.py "
        f"--sweep_dir=s {extra}", clone)
    assert done.returncode == 1, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()  # no log line before it
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert message in lines[0]
    assert "ray" not in done.stdout.lower()
  done = user_shell.run("python scripts/sweep.py --sweep_dir=s --status",
                        clone)
  assert done.returncode == 1 and "holds no sweep" in done.stderr


def _history(workdir: pathlib.Path) -> list[str]:
  record = json.loads((workdir / "run.json").read_text())
  return [h["event"] for h in record["history"]]


def test_the_readme_sweep_survives_a_killed_worker_and_an_interruption(
    tmp_path):
  """The README's sweep, shortened: a trial's worker is SIGKILLed after its
  second checkpoint (Tune retries it and it resumes from a checkpoint), the
  whole sweep is interrupted (SIGINT) once a trial has finished, and the same
  command resumes it without repeating the finished trials."""
  clone = user_shell.user_dir(tmp_path)
  trials = clone / "sweeps" / "lr" / "trials"
  command = f"{README_SWEEP} {SHORT}"
  proc = user_shell.start(command, clone)

  def checkpointed_unfinished():  # checkpoint 100 is whole once 200 exists
    return [w for w in trials.glob("*") if (w / "checkpoints" / "200").exists()
            and not (w / "final_metrics.json").exists()
            and (w / runs.LOCK_FILE).exists()]
  user_shell.wait_for(lambda: checkpointed_unfinished(), proc)
  killed = checkpointed_unfinished()[0]
  holder = (killed / runs.LOCK_FILE).read_text().split()
  os.kill(int(holder[1]), signal.SIGKILL)  # "process <pid> on <host> ..."

  def finished():
    return [w for w in trials.glob("*") if (w / "final_metrics.json").exists()]
  user_shell.wait_for(lambda: finished(), proc)
  rc, out, err = user_shell.stop(proc, signal.SIGINT)
  assert rc == 130, (out[-3000:], err[-3000:])
  assert "Stopping the sweep: each running trial saves a checkpoint" in out
  assert "run the same command to resume" in out
  # The running trials saved and stopped: no trial process is left.
  for workdir in trials.glob("*"):
    assert not runs.is_locked(str(workdir)), workdir
    pid = int((workdir / runs.LOCK_FILE).read_text().split()[1])
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)

  done = user_shell.run(README_STATUS, clone)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "finished" in done.stdout and "4 finished" not in done.stdout
  before = {w.name: (w / "final_metrics.json").read_text()
            for w in finished()}
  histories = {name: _history(trials / name) for name in before}

  done = user_shell.run(f"{command}", clone)
  assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
  assert len(finished()) == 4
  for name, text in before.items():  # not repeated: no new start or resume
    assert (trials / name / "final_metrics.json").read_text() == text
    assert _history(trials / name) == histories[name]
  assert "resume" in _history(killed), _history(killed)
  results = (clone / "sweeps" / "lr" / "results.md").read_text()
  assert results.startswith("4 of 4 trials finished")
  assert "Best learning rate by validation ELBO" in results
  assert len((clone / "sweeps" / "lr" / "results.csv").read_text()
             .strip().splitlines()) == 5
  done = user_shell.run(README_STATUS, clone)
  assert done.stdout.startswith(
      "0 queued, 0 running, 0 interrupted, 0 failed, 4 finished")


SLURM_SWEEP = ("bash scripts/slurm_sweep.sh --config=configs/sbn_linear.py "
               "--sweep_dir=sweeps/slurm --grid=seed=0 "
               "--config.num_steps=100 --config.eval_every=100")
STAND_INS = {  # SLURM's commands, for a one-node allocation on this machine
    "scontrol": '[ "$1 $2" = "show hostnames" ] && echo localhost',
    "srun": 'while [[ "$1" == -* ]]; do [ "$1" = -w ] && shift; shift; done\n'
            'exec "$@"',
}


def test_the_slurm_script_joins_the_ray_cluster_it_starts(tmp_path):
  """scripts/slurm_sweep.sh with stand-ins for scontrol and srun that run
  their command here (a one-node allocation): `ray start --head` starts a
  real Ray cluster, the sweep joins it through --address, and the cluster is
  stopped when the script ends. (Not run on a real SLURM cluster.)"""
  clone = user_shell.user_dir(tmp_path)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, body in STAND_INS.items():
    (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
    (bin_dir / name).chmod(0o755)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  path = f"{bin_dir}{os.pathsep}{user_shell.environment()['PATH']}"
  done = user_shell.run(SLURM_SWEEP, clone, PATH=path, RAY_PORT=str(port),
                        SLURM_JOB_NODELIST="localhost",
                        SLURM_CPUS_PER_TASK="1")
  assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
  assert "1 of 1 trials finished" in done.stdout
  assert "Connecting to existing Ray cluster at address" in done.stderr, (
      done.stderr[-3000:])
  assert "Started a local Ray instance" not in done.stderr
  # The cluster is gone with the script: no GCS server on its port.
  left = subprocess.run(["pgrep", "-f", f"gcs_server.*port={port}"],
                        capture_output=True, text=True, check=False)
  assert not left.stdout.strip(), left.stdout


def test_a_failing_trial_is_reported_failed_and_can_be_requeued(tmp_path):
  """A trial that diverges (a learning rate of 1e30) fails for good: its
  retries (--max_failures=1) do not train it again, the sweep exits 1 naming
  the way out, --status shows it failed with its error, and --requeue_failed
  runs it again."""
  clone = user_shell.user_dir(tmp_path)
  command = ("python scripts/sweep.py --config=configs/sbn_linear.py "
             "--sweep_dir=s --grid=learning_rate=1e30 --max_failures=1 "
             "--config.num_steps=100 --config.eval_every=100")
  done = user_shell.run(command, clone)
  assert done.returncode == 1, (done.stdout[-2000:], done.stderr[-2000:])
  assert "1 trial(s) failed" in done.stderr and "--requeue_failed" in (
      done.stderr)
  status = user_shell.run("python scripts/sweep.py --sweep_dir=s --status",
                          clone)
  assert "0 finished" in status.stdout and "1 failed" in status.stdout
  assert "| learning_rate=1e+30 | failed | 0/100 |" in status.stdout
  assert "TrainingStopped: Diverged" in status.stdout, status.stdout
  history = _history(clone / "s" / "trials" / "learning_rate=1e+30")
  assert history == ["start"], history  # the retry trained nothing
  again = user_shell.run(f"{command} --requeue_failed", clone)
  assert again.returncode == 1
  history = _history(clone / "s" / "trials" / "learning_rate=1e+30")
  assert history == ["start", "start"], history
