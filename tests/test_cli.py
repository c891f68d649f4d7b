"""The commands a user types, run as typed from a directory outside the tree.

* Every config in configs/: `python -m rebar_jax.train --config=configs/X.py`
  without --workdir (outputs in runs/X-<estimator>); for one config of each
  family, then again with --workdir naming that directory (a finished run: it
  resumes, trains nothing and prints the same final metrics).
* Every command in a config's docstring, as written.
* Every shell command in README.md: run here, or shown to be the full-length
  version of one that is (`README_COMMANDS`), or run by the test named there.

Commands are shortened only by appending step-count overrides
(--config.num_steps and --config.eval_every for training; the scripts' own
step and draw counts for scripts), which override the same flags earlier on
the line. Commands that need the paper data run where it is available
($REBAR_JAX_DATA_DIR, or ../shared/data beside the repository) and are skipped
with the reason elsewhere.
"""
import ast
import json
import pathlib
import re

import pytest

import paper_data
import test_sweep
import user_shell

ROOT = user_shell.ROOT
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.py")
                 if p.name != "__init__.py")
SHORT = "--config.num_steps=100 --config.eval_every=100"
RUN_FILES = ("checkpoints/100", "run.json", "config.json", "metrics.jsonl",
             "metrics.csv", "curves.png", "final_metrics.json", "lock")
PAPER_DATA = "$REBAR_JAX_DATA_DIR"
# Flags that only move a run's outputs or change its length.
STEP_FLAGS = ("--workdir=", "--config.num_steps=", "--config.eval_every=",
              "--config.checkpoint_every=")
# The scripts' own step and draw counts.
SCRIPT_SHORT = {"scripts/toy.py": "--num_steps=250 --num_variance_draws=8",
                "scripts/snr_vs_k.py": "--dim=2 --ks=2,3 --num_draws=16 "
                                       "--reference_draws=32 "
                                       "--estimators=dreg,vimco_geometric"}
# README commands that the tests here do not run, and what runs them instead.
ELSEWHERE = {
    "make test": "the suite itself (.ci/run calls it)",
    "make benchmark": "needs PyTorch and Storchastic in .venv-peers (make "
                      "peers downloads them); the script's tables, fits and "
                      "missing-peer path are tests/test_scripts.py",
    test_sweep.README_SWEEP: "tests/test_sweep.py::test_the_readme_sweep_"
                             "survives_a_killed_worker_and_an_interruption "
                             "runs it as typed, shortened",
    test_sweep.README_STATUS: "the same test runs it, before and after the "
                              "sweep is resumed",
    "python scripts/gmm.py --output_dir=results/gmm":
        "tests/test_scripts.py::test_gmm_command_writes_its_tables runs it "
        "with 40 steps, two Ks and OVIS-MC, and checks its files",
    "python -m rebar_jax.data.prepare --data_dir=$REBAR_JAX_DATA_DIR":
        "tests/test_prepare.py::test_command_line_with_the_real_checksums runs "
        "it with --mirror= a local server (these machines have no internet)",
    "python -m rebar_jax.train --config=examples/scaled_disarm_config.py "
    "--config.scale=0.5":
        "tests/test_registry.py::test_a_users_estimator_trains_from_the_"
        "command_line runs it from a user's directory with 100 steps",
    "python -m rebar_jax.train --config=configs/sbn_linear.py "
    "--config.estimator=auto --config.advise_every=5000":
        "tests/test_advise.py::test_auto_decides_records_and_resumes_to_the_"
        "same_run runs it with 100 steps, advice every 50, three candidates",
    "python -m rebar_jax.advise --config=configs/sbn_linear.py":
        "tests/test_advise.py::test_advice_on_every_config runs it as typed "
        "with tiny budgets (three estimators, four draws), and on the custom "
        "model; the other configs take its function in-process; it checks "
        "the files",
}


def shell_commands(text: str) -> list[str]:
  """Command lines in `text`: continuation lines joined, comments dropped."""
  commands, current = [], ""
  for line in text.splitlines():
    line = line.strip()
    if not current and not re.match(r"(python|make)\b", line):
      continue
    line = re.sub(r"\s+#.*$", "", line)
    if line.endswith("\\"):
      current += line[:-1].strip() + " "
      continue
    commands.append(" ".join((current + line).split()))
    current = ""
  return commands


def docstring_commands(config: str) -> list[str]:
  source = (ROOT / "configs" / config).read_text()
  return shell_commands(ast.get_docstring(ast.parse(source)) or "")


def needs_paper_data(command: str, config: str = "") -> bool:
  return ("data_source=local" in command or PAPER_DATA in command
          or "sbn_omniglot.py" in command or config == "sbn_omniglot.py")


def normalised(command: str) -> str:
  """`command` without its output directory and step counts."""
  return " ".join(w for w in command.split()
                  if not w.startswith(STEP_FLAGS))


def make_recipe(target: str) -> str:
  """The python command of a Makefile target, as a user would type it."""
  lines = (ROOT / "Makefile").read_text().splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith(f"{target}:"))
  body = []
  for line in lines[start + 1:]:
    if not line.startswith("\t"):
      break
    body.append(line.strip())
  python = [l for l in body if l.startswith("$(PY) ")]
  assert len(python) == 1, (target, body)
  return "python " + python[0][len("$(PY) "):]


def typed(command: str) -> str:
  """A README command as it runs: make targets become their python command."""
  if command.startswith("make "):
    return make_recipe(command.split()[1])
  return command


def shortened(command: str) -> str:
  for script, flags in SCRIPT_SHORT.items():
    if script in command:
      return f"{command} {flags}"
  if "rebar_jax.train" in command:
    return f"{command} {SHORT}"
  return command


def final_metrics(stdout: str) -> tuple[str, dict[str, str]]:
  """(workdir, {name: printed value}) from the trainer's last lines."""
  match = re.search(r"Final metrics \((.*)\):\n((?:  .*\n?)+)$", stdout)
  assert match, stdout[-2000:]
  values = dict(line.strip().split(": ", 1)
                for line in match.group(2).strip().splitlines())
  return match.group(1), values


def check_run(clone: pathlib.Path, done, expected_workdir=None):
  """Exit 0, final metrics printed and equal to final_metrics.json, files."""
  assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
  workdir, printed = final_metrics(done.stdout)
  if expected_workdir:
    assert workdir == expected_workdir
  run = clone / workdir
  for name in RUN_FILES:
    assert (run / name).exists(), name
  assert list((run / "tensorboard").glob("events.*"))
  saved = json.loads((run / "final_metrics.json").read_text())
  assert printed["step"] == str(saved["step"]) == "100"
  for key in ("valid_elbo", "test_elbo"):
    assert printed[key] == f"{saved[key]:.3f}"
    assert -1000 < saved[key] < 0
  for split in ("valid", "test"):  # the KL estimate is the logged bound gap
    gap = saved[f"{split}_iw100"] - saved[f"{split}_elbo"]
    assert abs(saved[f"{split}_kl"] - gap) < 1e-9 and gap > 0
  return workdir, printed


# Re-running a finished run's command with --workdir is checked for one
# config per family (it is the same code path for every config).
RERUN_CHECKED = ("sbn_mnist.py", "catvae_mnist.py")


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_runs_with_and_without_workdir(tmp_path, config):
  if needs_paper_data("", config):
    paper_data.require()
  clone = user_shell.user_dir(tmp_path)
  name = config[:-3]
  done = user_shell.run(
      f"python -m rebar_jax.train --config=configs/{config} {SHORT}", clone)
  estimator = json.loads(
      next((clone / "runs").glob(f"{name}-*/config.json")).read_text()
  )["estimator"]
  workdir, printed = check_run(clone, done, f"runs/{name}-{estimator}")
  if config not in RERUN_CHECKED:
    return
  again = user_shell.run(f"python -m rebar_jax.train --config=configs/{config}"
                         f" --workdir={workdir} {SHORT}", clone)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Resuming from step 100" in again.stdout
  assert final_metrics(again.stdout) == (workdir, printed)


def bare(config: str) -> str:
  return f"python -m rebar_jax.train --config=configs/{config}"


def readme_blocks() -> list[list[str]]:
  """The command lines of each ```sh block of README.md."""
  text = (ROOT / "README.md").read_text()
  return [shell_commands(block)
          for block in re.findall(r"```sh\n(.*?)```", text, re.S)]


CONFIG_RUNS = {normalised(bare(c)) for c in CONFIGS}
DOCSTRING_RUNS = {normalised(c) for config in CONFIGS
                  for c in docstring_commands(config)}
# A README block runs as a whole, in order, in one directory, when it holds a
# command that no config or docstring test runs (e.g. a report over the runs
# the block trained); the other README commands are shortened forms of those.
README_RUN_BLOCKS = [
    [typed(c) for c in block] for block in readme_blocks()
    if any(c not in ELSEWHERE and normalised(typed(c)) not in
           CONFIG_RUNS | DOCSTRING_RUNS for c in block)]
README_RUNS = {normalised(c) for block in README_RUN_BLOCKS for c in block}
DOCSTRING_COMMANDS = sorted(
    {(config, command) for config in CONFIGS
     for command in docstring_commands(config)
     if normalised(command) not in CONFIG_RUNS | README_RUNS})


def test_every_config_docstring_shows_a_command():
  for config in CONFIGS:
    commands = docstring_commands(config)
    assert commands, f"configs/{config} shows no command"
    assert all(f"--config=configs/{config}" in c for c in commands), commands


@pytest.mark.parametrize("config, command", DOCSTRING_COMMANDS,
                         ids=[f"{c}:{i}" for i, (c, _) in
                              enumerate(DOCSTRING_COMMANDS)])
def test_config_docstring_commands_run_as_written(tmp_path, config, command):
  if needs_paper_data(command, config):
    paper_data.require()
  clone = user_shell.user_dir(tmp_path)
  check_run(clone, user_shell.run(shortened(command), clone))


def test_every_readme_command_is_run_somewhere():
  commands = [c for block in readme_blocks() for c in block]
  assert "make run" in commands and "make test" in commands
  assert typed("make run") == bare("sbn_mnist.py")
  for command in commands:
    if command in ELSEWHERE:
      continue
    assert normalised(typed(command)) in (
        CONFIG_RUNS | DOCSTRING_RUNS | README_RUNS), command
  # What ELSEWHERE names exists.
  prepare = (ROOT / "tests" / "test_prepare.py").read_text()
  assert "def test_command_line_with_the_real_checksums(" in prepare
  assert "rebar_jax.data.prepare" in prepare
  assert typed("make benchmark").startswith("python scripts/benchmark.py")
  assert callable(getattr(test_sweep, "test_the_readme_sweep_survives_a_"
                                      "killed_worker_and_an_interruption"))


def run_block(tmp_path, block: list[str]) -> None:
  """Runs a block of commands as typed, in order, in one user directory."""
  if any(needs_paper_data(c) for c in block):
    paper_data.require()
  clone = user_shell.user_dir(tmp_path)
  for command in block:
    done = user_shell.run(shortened(command), clone)
    if "rebar_jax.train" in command:
      check_run(clone, done)
    else:
      assert done.returncode == 0, (command, done.stderr[-3000:])
      for flag in ("--output_dir=", "--output="):
        out = [w[len(flag):] for w in command.split() if w.startswith(flag)]
        for path in out:
          assert list(clone.glob(path + "*")), (command, path)


if README_RUN_BLOCKS:  # the README's blocks run elsewhere have no test here
  @pytest.mark.parametrize("block", README_RUN_BLOCKS,
                           ids=[f"block{i}" for i in
                                range(len(README_RUN_BLOCKS))])
  def test_readme_blocks_run_as_written(tmp_path, block):
    run_block(tmp_path, block)
