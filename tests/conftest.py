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
  every estimator, the exact noise proofs. (XLA:CPU's older IR emitters,
  --xla_cpu_use_fusion_emitters=false, on top of this halve the compile
  time again, but at -O0 they miscompile `continuity.find_jump`'s
  bisection scan: a continuous f shows a jump 30 times too large, found by
  test_continuity. Not used.) The notebook and the scripts'
  helper tests set the same option in their subprocesses; the users'
  commands (tests/test_cli.py, test_faults.py, ...) run as users run them.
* The summary says how many tests used the paper data and how many were
  skipped for want of it (`paper_data.require`), and how much of the test
  processes' time was XLA compiling (jax.monitoring's backend-compile
  events, in the pytest processes; the processes tests start are not
  counted, their tests' time is given apart).
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

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiled = [0.0, 0.0]  # seconds compiling: in all, at the last report
_spawned = [0, 0]  # processes started: in all, at the last report
_SPAWN_EVENTS = ("subprocess.Popen", "os.posix_spawn", "os.fork")


def _on_audit(event, args):
  # A process running code of its own (python, bash, make), not a probe such
  # as platform's `uname -p`.
  if event in _SPAWN_EVENTS and (event == "os.fork" or any(
      name in os.path.basename(str(args[0])) for name in ("python", "sh",
                                                          "make"))):
    _spawned[0] += 1


sys.addaudithook(_on_audit)


def _on_duration(event, duration, **kwargs):
  del kwargs
  if event == _COMPILE_EVENT:
    _compiled[0] += duration


jax.monitoring.register_event_duration_secs_listener(_on_duration)


@pytest.fixture(autouse=True)
def _xla_optimisations(request):
  """XLA's default optimisations for tests marked `optimized`.

  jax_disable_most_optimizations is not part of jax's in-memory jit cache
  key, so a program this worker compiled unoptimised for an earlier test
  would be reused as it is: the caches are cleared on the way in and out
  (an optimized test's evaluation otherwise differed from the same
  command's in the last bits, depending on which tests the worker ran
  before it).
  """
  if request.node.get_closest_marker("optimized") is None:
    yield
    return
  jax.clear_caches()
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.clear_caches()
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
# users' commands, Ray sweeps, killed runs, the site build, multi-process
# set-ups). They are collected first so
# that pytest-xdist starts them early and the suite ends on short tests
# instead of one worker finishing a long one alone.
_LONG_FIRST = ("test_sweep.py", "test_cli.py", "test_faults.py",
               "test_docs.py", "test_parallel.py", "test_scripts.py")


def pytest_collection_modifyitems(session, config, items):
  del session, config
  rank = lambda item: (0 if item.path.name in _LONG_FIRST else 1)
  items.sort(key=rank)  # stable: the order within each group is kept


def pytest_runtest_logstart(nodeid, location):
  """What a test's reports count starts here (not at collection)."""
  del nodeid, location
  _compiled[1], _spawned[1] = _compiled[0], _spawned[0]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """Each phase's report carries the seconds this process compiled in it."""
  del item, call
  outcome = yield
  report = outcome.get_result()
  report.user_properties.append(("xla_compile_s",
                                 _compiled[0] - _compiled[1]))
  report.user_properties.append(("spawned", _spawned[0] - _spawned[1]))
  _compiled[1], _spawned[1] = _compiled[0], _spawned[0]


def _compile_summary(terminalreporter) -> str:
  """Compile seconds of the in-process tests against their time, and the
  time of the tests that start processes."""
  phases = [r for reports in terminalreporter.stats.values() for r in reports
            if getattr(r, "when", None) in ("setup", "call", "teardown")]
  spawning = {r.nodeid for r in phases
              if dict(r.user_properties).get("spawned", 0)}
  compile_s = sum(dict(r.user_properties).get("xla_compile_s", 0.0)
                  for r in phases if r.nodeid not in spawning)
  in_process = sum(r.duration for r in phases if r.nodeid not in spawning)
  outside = sum(r.duration for r in phases if r.nodeid in spawning)
  alone = len({r.nodeid for r in phases} - spawning)
  return (f"time in tests: {in_process:.0f} s in {alone} in-process tests "
          f"({compile_s:.0f} s of it XLA compiling), "
          f"{outside:.0f} s in {len(spawning)} tests that start processes "
          "(their compiles not counted)")


def pytest_terminal_summary(terminalreporter, config):
  terminalreporter.write_line(_compile_summary(terminalreporter))
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
