"""The documentation site builds, warning-free, and what it shows runs.

* `make docs`'s command, as the Makefile has it, builds the site with
  warnings as errors (`-W --keep-going`): broken cross-references, missing
  autodoc targets, a notebook cell that raises all fail it. The output goes
  to a temporary directory; the command is otherwise the recipe's.
* The build executes both notebooks (MyST-NB): tutorials/estimators_tour
  checks every estimator against exact gradients, bring_your_own_model a
  user's model; their asserts are tests, and they run once per suite, here.
  Each kernel must be this interpreter: jupyter_client resolves the
  `python3` kernel to the ipykernel of the interpreter that runs the build
  (the kernelspec ipykernel installs into sys.prefix starts a bare `python`,
  which it replaces by sys.executable), but a user-level `python3`
  kernelspec takes precedence; an IPython startup file, in an IPYTHONDIR of
  the test's own, records each kernel's sys.prefix. Like the in-process
  tests (conftest.py), the kernels compile with most of XLA's optimisations
  off: their draws are cheap, their compiles are not.
* The executed notebooks hold no error output and each draws a figure; the
  generated catalogue has an entry for every registered estimator.
* Every ```python block of a page runs, the blocks of a page in order in one
  namespace (as a reader pastes them); every shell command of a page is run
  by tests/test_cli.py's machinery (a config, a config docstring, a README
  block or what its ELSEWHERE names), or here, block by block, as typed.
  The results pages are excluded from the commands: they record how a
  measurement was made (hours of runs; tests/test_scripts.py tests the
  scripts).
"""
import contextlib
import io
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import test_cli
import user_shell

ROOT = user_shell.ROOT
DOCS = ROOT / "docs"
NOTEBOOKS = ("estimators_tour", "bring_your_own_model")
# Pages written for the site (the results pages are the scripts' outputs).
PAGES = sorted(p for p in DOCS.rglob("*.md")
               if not p.relative_to(DOCS).parts[0].startswith(("_build",
                                                               "results",
                                                               "toy")))

_STARTUP = """\
import os, sys
with open(os.environ["REBAR_JAX_DOCS_KERNELS"], "a") as fh:
  fh.write(sys.prefix + "\\n")
"""


def docs_command(out: pathlib.Path) -> list[str]:
  """`make docs`'s recipe, writing to `out` instead of docs/_build."""
  recipe = test_cli.make_recipe("docs").split()
  assert recipe[:3] == ["python", "-m", "sphinx"], recipe
  assert "-W" in recipe and "--keep-going" in recipe, recipe
  assert recipe[-2:] == ["docs", "docs/_build/html"], recipe
  return ([sys.executable] + recipe[1:-1] + [str(out / "html")]
          + ["-d", str(out / "doctrees")])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
  """Builds the site once; (output directory, the build's output)."""
  out = tmp_path_factory.mktemp("site")
  startup = out / "ipython" / "profile_default" / "startup"
  startup.mkdir(parents=True)
  (startup / "00-record-prefix.py").write_text(_STARTUP)
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
  env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
  env["IPYTHONDIR"] = str(out / "ipython")
  env["REBAR_JAX_DOCS_KERNELS"] = str(out / "kernels.txt")
  done = subprocess.run(docs_command(out), cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=1500,
                        check=False)
  log = done.stdout + done.stderr
  # -W: any Sphinx warning (a broken reference, an autodoc import, a cell
  # that raised) makes the exit status nonzero; --keep-going lists them all.
  assert done.returncode == 0, log[-6000:]
  return out, log


def test_site_builds_with_warnings_as_errors(site):
  out, _ = site
  html = out / "html"
  for page in ("index", "getting_started", "catalogue", "api/estimators",
               "tests", "results", "results/README", "guides/training"):
    assert (html / f"{page}.html").exists(), page
  # The results pages' plots are in the site.
  assert (html / "_images" / "variance.png").exists()


def test_notebooks_ran_on_this_interpreter_without_errors(site):
  out, _ = site
  prefixes = (out / "kernels.txt").read_text().split()
  assert len(prefixes) == len(NOTEBOOKS), prefixes
  assert set(prefixes) == {sys.prefix}, (
      f"a notebook kernel ran {prefixes}, not the interpreter running the "
      f"tests ({sys.executable})")
  for name in NOTEBOOKS:
    executed = out / "jupyter_execute" / "tutorials" / f"{name}.ipynb"
    nb = json.loads(executed.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code"
               for o in c.get("outputs", [])]
    assert outputs, name
    assert not [o for o in outputs if o["output_type"] == "error"], name
    assert any("image/png" in o.get("data", {}) for o in outputs), (
        f"{name} drew no figure")
    assert (out / "html" / "tutorials" / f"{name}.html").exists()


def test_catalogue_has_every_registered_estimator(site):
  from rebar_jax import estimators  # pylint: disable=g-import-not-at-top
  from rebar_jax.estimators import registry  # pylint: disable=g-import-not-at-top
  out, _ = site
  html = (out / "html" / "catalogue.html").read_text()
  ids = set(re.findall(r'id="([^"]+)"', html))
  names = {"bernoulli": estimators.BERNOULLI,
           "categorical": estimators.CATEGORICAL,
           "gaussian": estimators.GAUSSIAN,
           "multisample": [n for n in registry.ENTRIES
                           if registry.get(n).is_multisample]}
  for family, listed in names.items():
    for name in listed:
      anchor = f"{family}-{name}".replace(".", "-").replace("_", "-")
      assert anchor in ids, anchor
  for name in registry.names(kind=registry.LAYER):
    assert f'<span class="pre">{name}</span>' in html, name


def python_blocks(page: pathlib.Path) -> list[str]:
  return re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)


PYTHON_PAGES = [p for p in PAGES if python_blocks(p)]


@pytest.mark.parametrize("page", PYTHON_PAGES,
                         ids=[str(p.relative_to(DOCS)) for p in PYTHON_PAGES])
def test_python_blocks_run(page):
  namespace = {}
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    for i, block in enumerate(python_blocks(page)):
      exec(compile(block, f"{page.name}[{i}]", "exec"), namespace)  # pylint: disable=exec-used
  if page.name == "getting_started.md":  # what the example claims
    draws = np.asarray(namespace["draws"])
    se = draws.std(0) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(0) - namespace["exact"]) <= 4.5 * se)
    assert namespace["grad"].shape == (3,)
    assert out.getvalue().strip()


def test_there_are_python_blocks():
  assert any(p.name == "getting_started.md" for p in PYTHON_PAGES)


def page_blocks() -> list[tuple[str, list[str]]]:
  """(page, command lines) of each ```sh block of the site's pages."""
  return [(str(p.relative_to(DOCS)), test_cli.shell_commands(block))
          for p in PAGES
          for block in re.findall(r"```sh\n(.*?)```", p.read_text(), re.S)]


RUN_ELSEWHERE = (test_cli.CONFIG_RUNS | test_cli.DOCSTRING_RUNS
                 | test_cli.README_RUNS)


def _run_elsewhere(command: str) -> bool:
  return (command in test_cli.ELSEWHERE or command == "make docs"
          or test_cli.normalised(test_cli.typed(command)) in RUN_ELSEWHERE)


# A block runs here, as a whole, when it holds a command nothing else runs.
RUN_BLOCKS = [(page, [test_cli.typed(c) for c in commands])
              for page, commands in page_blocks()
              if not all(_run_elsewhere(c) for c in commands)]


def test_every_page_command_is_run_somewhere():
  commands = [c for _, block in page_blocks() for c in block]
  assert "make run" in commands and "make test" in commands
  here = {test_cli.normalised(c) for _, block in RUN_BLOCKS for c in block}
  for command in commands:
    assert (_run_elsewhere(command)
            or test_cli.normalised(test_cli.typed(command)) in here), command


@pytest.mark.parametrize("page, block", RUN_BLOCKS,
                         ids=[f"{p}:{i}" for i, (p, _) in
                              enumerate(RUN_BLOCKS)])
def test_page_blocks_run_as_written(tmp_path, page, block):
  del page
  test_cli.run_block(tmp_path, block)
