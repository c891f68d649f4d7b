"""notebooks/estimators_tour.ipynb runs top to bottom; its asserts are the test.

The notebook checks every estimator against exact gradients (z-scores), the
biased ones for a visible bias, and REBAR / RELAX unbiased after tuning, so a
cell that raises is a failure here. It runs with nbclient on the `python3`
kernel, which jupyter_client resolves to the ipykernel of this interpreter:
the kernelspec that ipykernel installs into sys.prefix starts a bare `python`,
which jupyter_client replaces by sys.executable (and without that kernelspec
the built-in native one uses sys.executable). A first cell, added to the
in-memory copy only, fails if the kernel runs another environment anyway (a
user-level `python3` kernelspec takes precedence). The kernel works in a
temporary directory; the committed notebook is read, never rewritten.
"""
import os
import sys

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "estimators_tour.ipynb")


def test_estimators_tour_runs_top_to_bottom(tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert any(c.cell_type == "code" for c in nb.cells)
  nb.cells.insert(0, nbformat.v4.new_code_cell(
      "import sys\n"
      f"assert sys.prefix == {sys.prefix!r}, (\n"
      "    f'the python3 kernel runs {sys.executable} (prefix {sys.prefix}), not '\n"
      f"    {'the interpreter running the tests, ' + sys.executable!r})"))
  # This checkout's rebar_jax first, whatever else the kernel's path holds.
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (ROOT, env.get("PYTHONPATH")) if p)
  # Compiled like the in-process tests (tests/conftest.py): its draws are
  # cheap, its compiles are not.
  env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
  client = NotebookClient(nb, kernel_name="python3", timeout=300,
                          extra_arguments=["--InteractiveShell.colors=nocolor"],
                          resources={"metadata": {"path": str(tmp_path)}})
  client.execute(env=env)  # raises CellExecutionError naming the failing cell
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs), "no figure"
