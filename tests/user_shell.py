"""Commands run as a user types them: a shell in a fresh directory.

`user_dir(tmp)` makes a directory that looks like a user's clone from the
outside (configs/, scripts/, notebooks/, README.md copied in) with nothing of
the development tree beside it; `run(command, cwd)` runs a command line with
bash there, with the test environment's python first on PATH (so `python`
is the interpreter the package is installed in) and this checkout's
rebar_jax first on PYTHONPATH, $REBAR_JAX_DATA_DIR set when
the paper data are available, and the persistent XLA cache of conftest.py
inherited through the environment.

What the tests read of a command's stderr leaves out one line of XLA's: on
some CPUs jaxlib logs "Loading XLA:CPU AOT result. Target machine feature
+prefer-no-gather is not supported ..." (cpu_aot_loader.cc) for every
program it loads from a persistent cache, a tuning flag taken for a missing
CPU feature (jax-ml/jax#38445, openxla/xla#44565); the program loads and
runs. A user without a cache never sees it; the suite's cache must not make
a command's one error line look like several.
"""
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

import paper_data

ROOT = pathlib.Path(__file__).resolve().parents[1]
COPIED = ("configs", "scripts", "notebooks", "examples", "README.md")


def user_dir(tmp: pathlib.Path) -> pathlib.Path:
  """tmp/clone holding copies of what a user runs commands from."""
  clone = pathlib.Path(tmp) / "clone"
  clone.mkdir(parents=True)
  for name in COPIED:
    src = ROOT / name
    if src.is_dir():
      shutil.copytree(src, clone / name,
                      ignore=shutil.ignore_patterns("__pycache__"))
    elif src.is_file():
      shutil.copy(src, clone / name)
  return clone


def environment(**extra: str) -> dict[str, str]:
  env = dict(os.environ)
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
  # The checkout under test, whatever the environment's install points to.
  env["PYTHONPATH"] = str(ROOT)
  if paper_data.AVAILABLE:
    env[paper_data.ENV] = str(paper_data.DATA_DIR)
  else:
    env.pop(paper_data.ENV, None)
  env.update(extra)
  return env


_XLA_CACHE_NOISE = ("cpu_aot_loader.cc", "Loading XLA:CPU AOT result")


def without_xla_cache_noise(stderr: str) -> str:
  """stderr without the lines XLA logs for a cached program (module doc)."""
  return "".join(line for line in stderr.splitlines(keepends=True)
                 if not all(mark in line for mark in _XLA_CACHE_NOISE))


def run(command: str, cwd: pathlib.Path, timeout: float = 600,
        **env: str) -> subprocess.CompletedProcess:
  """Runs `command` with bash in `cwd`; stdout and stderr captured as text."""
  done = subprocess.run(["bash", "-c", command], cwd=cwd,
                        env=environment(**env), capture_output=True,
                        text=True, timeout=timeout, check=False)
  done.stderr = without_xla_cache_noise(done.stderr)
  return done


def start(command: str, cwd: pathlib.Path, **env: str) -> subprocess.Popen:
  """Starts `command` (exec'd by bash, so signals reach python itself).

  Its stdout and stderr go to temporary files, not pipes: a child that
  writes more than a pipe holds (XLA logs a long line for every program it
  loads from a persistent cache) would block while the test polls it.
  `finish` waits for it and reads them.
  """
  out = tempfile.TemporaryFile(mode="w+")
  err = tempfile.TemporaryFile(mode="w+")
  proc = subprocess.Popen(["bash", "-c", "exec " + command], cwd=cwd,
                          env=environment(**env), stdout=out, stderr=err,
                          text=True)
  proc.output_files = (out, err)
  return proc


def finish(proc: subprocess.Popen, timeout: float = 600
           ) -> tuple[int, str, str]:
  """Waits for a `start`ed process; (exit status, stdout, stderr)."""
  proc.wait(timeout=timeout)
  texts = []
  for f in proc.output_files:
    f.seek(0)
    texts.append(f.read())
    f.close()
  return proc.returncode, texts[0], without_xla_cache_noise(texts[1])


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen,
             timeout: float = 300) -> None:
  """Polls `condition` until true; fails if `proc` exits first."""
  deadline = time.monotonic() + timeout
  while not condition():
    if proc.poll() is not None:
      code, out, err = finish(proc)
      raise AssertionError(f"process exited ({code}) before the "
                           f"condition held:\n{out}\n{err}")
    if time.monotonic() > deadline:
      proc.kill()
      raise AssertionError("timed out waiting for the condition")
    time.sleep(0.02)


def stop(proc: subprocess.Popen, signum: int = signal.SIGKILL,
         timeout: float = 120) -> tuple[int, str, str]:
  """Sends `signum`, waits; (exit status, stdout, stderr)."""
  proc.send_signal(signum)
  return finish(proc, timeout)


def rows(path: pathlib.Path) -> list[dict]:
  """metrics.jsonl rows without the timing column (which differs by run)."""
  import json  # pylint: disable=g-import-not-at-top
  if not path.exists():
    return []
  out = []
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except ValueError:
      continue
    row.pop("steps_per_sec", None)
    out.append(row)
  return out


def count_rows(path: pathlib.Path) -> Optional[int]:
  return len(rows(path))
