"""Sphinx configuration of the rebar_jax documentation (`make docs`).

The site is Markdown (MyST) and notebooks (MyST-NB, executed at every build),
with an API reference from the docstrings (autodoc + napoleon) and an
estimator catalogue generated from the registries (`_ext/catalogue.py`).
The build is a test: tests/test_docs.py runs it with warnings as errors.
"""
import os
import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
# This checkout's rebar_jax, for autodoc here and for the notebooks' kernels
# (they inherit the environment of the build).
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

project = "rebar_jax"
author = "rebar_jax authors"
copyright = "rebar_jax authors"  # pylint: disable=redefined-builtin

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "catalogue",
]

exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
extensions.append("docstrings")

# The API reference (autodoc): members in source order, the signature's types
# in the description, `name` in a docstring set as code.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
# The docstrings' equations (literal blocks) are math, not Python.
highlight_language = "text"
autodoc_default_options = {"members": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
default_role = "literal"
napoleon_use_ivar = True
napoleon_use_rtype = False  # "Returns: Jump(size, at): ..." is prose, not a type
add_module_names = False
extensions.append("results_links")

# MyST: $...$ and $$...$$ math (the notebooks), ::: fences, heading anchors
# for links like page.md#a-section.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# MyST-NB: every notebook is executed at every build, in a temporary
# directory, on the `python3` kernel (jupyter_client resolves it to this
# interpreter); a cell that raises fails the build.
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_in_temp = True
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

html_theme = "sphinx_book_theme"
html_title = "rebar_jax"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
html_static_path = ["_static"]
html_css_files = ["custom.css"]
