"""Faults against the real trainer process: kill -9, SIGINT, SIGTERM, SIGHUP,
two runs, a full or read-only disk, a deleted workdir, bad command lines.

`python -m rebar_jax.train` runs as a subprocess on a tiny linear SBN (20
units, embedded digits, a checkpoint every 50 steps). One run is hurt again and
again, each time restarted with the same command: SIGINT, SIGTERM, SIGHUP,
Ctrl-C twice, a second process on the same workdir, and SIGKILL at three
random points (drawn from a fixed seed: after a random number of new logged
chunks plus a random delay, so kills land inside chunks and while checkpoints
are written). At the end its final metrics and its whole metrics history must
equal those of an uninterrupted run.

The disk faults use small tmpfs mounts (skipped where mounting is not
allowed).
"""
import contextlib
import json
import pathlib
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import user_shell

COMMAND = (
    "python -m rebar_jax.train --config=configs/sbn_linear.py --workdir=run "
    "--config.num_latents=20 --config.estimator=disarm "
    "--config.learning_rate=1e-3 --config.num_steps={steps} "
    "--config.steps_per_call=50 --config.checkpoint_every=50 "
    "--config.eval_every=5000 --config.eval_num_samples=5 "
    "--config.eval_max_examples=100 --config.diagnostic_draws=0 "
    "--config.progress_bar=false")
STEPS = 5000


def _restart(clone):
  return user_shell.start(COMMAND.format(steps=STEPS), clone)


def _after_new_rows(proc, metrics, new):
  """Waits until `new` more rows are logged than when called."""
  have = user_shell.count_rows(metrics)
  user_shell.wait_for(lambda: user_shell.count_rows(metrics) >= have + new,
                      proc)


def _check_clean_stop(clone, proc, signum, status):
  """The run stopped on signum: one line, a checkpoint at its step."""
  code, out, err = user_shell.stop(proc, signum)
  assert code == status, (out, err)
  last = out.strip().splitlines()[-1]
  name = signal.Signals(signum).name
  assert last.startswith(f"Stopped by {name} at step "), out
  assert last.endswith("Run the same command to resume."), last
  assert "Traceback" not in err, err
  step = int(last.split(" at step ")[1].split(";")[0])
  assert (clone / "run" / "checkpoints" / str(step)).is_dir()
  assert user_shell.rows(clone / "run" / "metrics.jsonl")[-1]["step"] == step


def test_a_run_hurt_many_ways_ends_as_an_uninterrupted_one(tmp_path):
  rng = np.random.default_rng(0)
  command = COMMAND.format(steps=STEPS)
  reference = user_shell.user_dir(tmp_path / "reference")
  done = user_shell.run(command, reference)
  assert done.returncode == 0, done.stderr[-3000:]

  clone = user_shell.user_dir(tmp_path / "hurt")
  metrics = clone / "run" / "metrics.jsonl"
  proc = _restart(clone)
  _after_new_rows(proc, metrics, 2)
  _check_clean_stop(clone, proc, signal.SIGINT, 130)

  proc = _restart(clone)
  _after_new_rows(proc, metrics, 1)
  second = user_shell.run(command, clone)  # a second process, same workdir
  assert second.returncode == 1, second.stderr
  assert f"is in use by process {proc.pid} on" in second.stderr
  assert "Traceback" not in second.stderr
  _check_clean_stop(clone, proc, signal.SIGTERM, 143)

  proc = _restart(clone)  # the terminal closed, the ssh session dropped
  _after_new_rows(proc, metrics, 1)
  _check_clean_stop(clone, proc, signal.SIGHUP, 129)

  proc = _restart(clone)  # Ctrl-C twice: the second stops at once
  _after_new_rows(proc, metrics, 1)
  proc.send_signal(signal.SIGINT)
  time.sleep(0.02)
  code, out, err = user_shell.stop(proc, signal.SIGINT)
  assert code == 130, (out, err)
  assert out.strip().splitlines()[-1].endswith(
      "Run the same command to resume."), out
  assert "Traceback" not in err, err

  for _ in range(3):  # kill -9 at random points; the lock dies with it
    proc = _restart(clone)
    _after_new_rows(proc, metrics, int(rng.integers(1, 4)))
    time.sleep(float(rng.uniform(0.0, 0.05)))
    status, _, _ = user_shell.stop(proc, signal.SIGKILL)
    assert status == -signal.SIGKILL
    # What was flushed at the last checkpoint survived the kill.
    events = list((clone / "run" / "tensorboard").glob("events.*"))
    assert events and max(e.stat().st_size for e in events) > 0

  done = user_shell.run(command, clone)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "Resuming from step" in done.stdout
  final = json.loads((clone / "run" / "final_metrics.json").read_text())
  expected = json.loads((reference / "run" / "final_metrics.json").read_text())
  assert final == expected
  assert user_shell.rows(metrics) == user_shell.rows(
      reference / "run" / "metrics.jsonl")
  history = json.loads((clone / "run" / "run.json").read_text())["history"]
  # The first process started the run; seven resumed it (the refused second
  # process left no trace).
  assert [h["event"] for h in history] == ["start"] + ["resume"] * 7


def _one_error_line(done) -> str:
  assert done.returncode == 1, (done.stdout, done.stderr)
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
  return lines[0]


@contextlib.contextmanager
def _tmpfs(where: pathlib.Path, options: str):
  where.mkdir(parents=True, exist_ok=True)
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs",
                            str(where)], capture_output=True, check=False)
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr!r}")
  try:
    yield where
  finally:
    subprocess.run(["umount", str(where)], check=False)


SHORT = COMMAND.replace("--workdir=run", "--workdir=disk/run")


def test_a_read_only_or_full_disk_at_start_is_one_line(tmp_path):
  clone = user_shell.user_dir(tmp_path)
  command = SHORT.format(steps=100)
  with _tmpfs(clone / "disk", "ro,size=1m"):
    line = _one_error_line(user_shell.run(command, clone))
    assert line == ("error: disk/run is on a read-only file system; choose a "
                    "--workdir on a writable disk."), line
  with _tmpfs(clone / "disk", "size=4k"):
    line = _one_error_line(user_shell.run(command, clone))
    assert line == ("error: disk full writing disk/run/run.json; free space "
                    "and rerun."), line
    assert not (clone / "disk" / "run" / "run.json.tmp").exists()


def test_a_disk_filling_mid_run_is_one_line_and_the_rerun_continues(
    tmp_path):
  clone = user_shell.user_dir(tmp_path)
  command = SHORT.format(steps=200)
  # Room for the run's files and one checkpoint (~0.4 MB), not two.
  with _tmpfs(clone / "disk", "size=700k") as disk:
    line = _one_error_line(user_shell.run(command, clone))
    assert line == (f"error: disk full writing {disk}/run/checkpoints/100; "
                    "free space and rerun."), line
    left = sorted(p.name for p in (disk / "run" / "checkpoints").iterdir())
    assert left == ["50"], left  # no orbax temporary directory is left
    subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
    done = user_shell.run(command, clone)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Resuming from step 50" in done.stdout


def test_a_workdir_deleted_mid_run_says_so(tmp_path):
  clone = user_shell.user_dir(tmp_path)
  proc = _restart(clone)
  _after_new_rows(proc, clone / "run" / "metrics.jsonl", 1)
  # As `rm -rf run` typed again: the run may write a file into a directory
  # between the removal of its files and of the directory itself.
  while (clone / "run").exists():
    shutil.rmtree(clone / "run", ignore_errors=True)
  code, out, err = user_shell.finish(proc)
  assert code == 1, (out, err)
  assert "error: the workdir run is gone (deleted while the run was going)" \
      in err, err
  assert "Traceback" not in err, err


@pytest.mark.parametrize("flag, message", [
    ("--config.learnig_rate=1e-3",
     "error: the config has no field 'learnig_rate'. Did you mean "
     '"learning_rate" instead of "learnig_rate"?'),
    ("--config.model=os:getcwd",
     "error: config.model='os:getcwd': calling it as factory(config, "
     "dataset) failed"),
    ("--config.dataset=mnits", "error: config.dataset must be one of"),
])
def test_bad_command_lines_are_one_line(tmp_path, flag, message):
  clone = user_shell.user_dir(tmp_path)
  line = _one_error_line(user_shell.run(
      COMMAND.format(steps=100) + " " + flag, clone))
  assert line.startswith(message), line
  assert not (clone / "run").exists()
