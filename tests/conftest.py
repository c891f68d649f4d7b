"""pytest set-up for the whole suite.

* absl flags are parsed (absltest helpers such as create_tempdir read
  --test_tmpdir), and the repository root is importable so tests can load
  configs/.
* A persistent XLA compilation cache shared by every test process (pytest-xdist
  workers and the subprocesses the command-line tests start, which inherit the
  environment): many tests compile the same train step or evaluation, and
  compiling dominates their time on 2 CPU cores. The cache is keyed by the
  program, jax/jaxlib versions and flags, so a hit returns the same executable.
  Every program is cached, however quick to compile: a trainer process runs
  dozens of small eager ops (parameter init, optimiser init) whose compiles
  add up to ~2 s per process (12.7 s instead of 14.7 s for a warm 100-step
  run of configs/sbn_linear2.py). Set JAX_COMPILATION_CACHE_DIR yourself to
  choose its place.
* In this process, XLA compiles with most optimisations off
  (`jax_disable_most_optimizations`): compiling dominates the in-process
  tests on 2 CPU cores and their programs run in milliseconds, and it halves
  their time (test_bernoulli + test_gradients from a cold cache: 6 min 39 s
  -> 3 min 43 s). Tests marked `optimized` compile with XLA's defaults, as
  users' programs do: the guard against miscompiles
  (tests/test_xla_regressions.py) and one unbiasedness proof per family of
  every estimator, the exact noise proofs. The notebook and the scripts'
  helper tests set the same option in their subprocesses; the users'
  commands (tests/test_cli.py, test_faults.py, ...) run as users run them.
* The summary says how many tests used the paper data and how many were
  skipped for want of it (`paper_data.require`).
"""
import os
import sys
import tempfile

from absl import flags
import jax
import pytest

import paper_data

os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"rebar_jax_test_xla_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()


jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(autouse=True)
def _xla_optimisations(request):
  """XLA's default optimisations for tests marked `optimized`."""
  if request.node.get_closest_marker("optimized") is None:
    yield
    return
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", True)


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "optimized: compile with XLA's default optimisations, as "
      "users' programs do (the suite's default turns most of them off).")
  # Set before pytest-xdist starts its workers, which inherit it.
  if not hasattr(config, "workerinput"):
    fd, path = tempfile.mkstemp(prefix="rebar_jax_paper_data_", suffix=".log")
    os.close(fd)
    os.environ[paper_data.LOG_ENV] = path
    config.paper_data_log = path


# Modules whose tests each start processes that run for tens of seconds (the
# users' commands, killed runs, the notebook). They are collected first so
# that pytest-xdist starts them early and the suite ends on short tests
# instead of one worker finishing a long one alone.
_LONG_FIRST = ("test_cli.py", "test_faults.py", "test_docs.py",
               "test_scripts.py")


def pytest_collection_modifyitems(session, config, items):
  del session, config
  rank = lambda item: (0 if item.path.name in _LONG_FIRST else 1)
  items.sort(key=rank)  # stable: the order within each group is kept


def pytest_terminal_summary(terminalreporter, config):
  path = getattr(config, "paper_data_log", None)
  if path is None:
    return
  with open(path) as fh:
    ran = {line.strip() for line in fh if line.strip()}
  os.remove(path)
  skipped = [r for r in terminalreporter.stats.get("skipped", [])
             if paper_data.ENV in str(r.longrepr)]
  where = (f"from {paper_data.DATA_DIR}" if paper_data.AVAILABLE
           else "(not found)")
  terminalreporter.write_line(
      f"paper data {where}: {len(ran)} tests used it, {len(skipped)} skipped "
      "for want of it")
