"""Where the tests find the paper data, and how they skip without it.

$REBAR_JAX_DATA_DIR names a directory written by
`python -m rebar_jax.data.prepare` (binarized_mnist.npz, mnist.npz,
omniglot_*.npz); without it, ../shared/data beside the repository is used when
it exists (the development tree and CI). On any other clone the tests that need
these files are skipped with `REASON`.
"""
import os
import pathlib

import pytest

ENV = "REBAR_JAX_DATA_DIR"
_ROOT = pathlib.Path(__file__).resolve().parents[1]
_BESIDE = _ROOT.parent / "shared" / "data"

DATA_DIR = (pathlib.Path(os.environ[ENV]).expanduser() if os.environ.get(ENV)
            else _BESIDE if _BESIDE.is_dir() else None)
AVAILABLE = DATA_DIR is not None and (DATA_DIR / "binarized_mnist.npz").is_file()
REASON = (
    f"the paper data are not here: set {ENV} to a directory written by "
    f"`python -m rebar_jax.data.prepare --data_dir=DIR` (looked in "
    f"{DATA_DIR or f'${ENV} (unset) and {_BESIDE}'})")

# conftest.py names a file here; each test that gets the data appends its id,
# so the session's summary can say how many paper-data tests ran.
LOG_ENV = "REBAR_JAX_PAPER_DATA_LOG"


def require() -> pathlib.Path:
  """DATA_DIR, or skip the calling test with `REASON`."""
  if not AVAILABLE:
    pytest.skip(REASON)
  log = os.environ.get(LOG_ENV)
  if log:
    with open(log, "a") as fh:
      fh.write(os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0] + "\n")
  return DATA_DIR
