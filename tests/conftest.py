"""pytest set-up for the whole suite.

* absl flags are parsed (absltest helpers such as create_tempdir read
  --test_tmpdir), and the repository root is importable so tests can load
  configs/.
* A persistent XLA compilation cache shared by every test process (pytest-xdist
  workers and the subprocesses the command-line tests start, which inherit the
  environment): many tests compile the same train step or evaluation, and
  compiling dominates their time on 2 CPU cores. The cache is keyed by the
  program, jax/jaxlib versions and flags, so a hit returns the same executable.
  Set JAX_COMPILATION_CACHE_DIR yourself to choose its place.
"""
import os
import sys
import tempfile

from absl import flags

os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"rebar_jax_test_xla_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()
