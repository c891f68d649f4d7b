# Two commands do all the set-up on a fresh machine (Python >= 3.10):
#   make test   -- virtual environment in .venv, package + test extras, ruff +
#                  mypy over rebar_jax/, whole suite
#   make run    -- the main job: train configs/sbn_mnist.py on the embedded digits
#   make docs   -- the documentation site, into docs/_build/html
#   make lint   -- ruff and mypy over rebar_jax/ (config in pyproject.toml)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BASE   := $(VENV)/.installed-base
TESTS  := $(VENV)/.installed-test

.PHONY: test lint run toy benchmark peers install clean docs

$(BASE): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(BASE)

# The test extras include TensorFlow + tensorflow-datasets (the TFDS loading
# path is tested for real, offline, from a manual directory), Ray Tune (the
# sweeps are tested on a real local Ray instance and a `ray start` cluster)
# and the docs extra (tests/test_docs.py builds the site).
$(TESTS): $(BASE) setup.py
	$(PY) -m pip install --quiet -e ".[test,tfds,sweep,docs]"
	touch $(TESTS)

DOCS := $(VENV)/.installed-docs
$(DOCS): $(BASE) setup.py
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $(DOCS)

install: $(BASE)

# The suite, after ruff and mypy over the library (zero findings).
test: lint
	$(PY) -m pytest -n 2 --dist worksteal -q -rs tests

# Lint and type check (configuration in pyproject.toml; both pinned in the
# test extras).
lint: $(TESTS)
	$(PY) -m ruff check rebar_jax
	$(PY) -m mypy rebar_jax

# The site, into docs/_build/html: the notebooks executed, the estimator
# catalogue generated from the registries, warnings as errors.
docs: $(DOCS)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

run: $(BASE)
	$(PY) -m rebar_jax.train --config=configs/sbn_mnist.py

toy: $(BASE)
	$(PY) scripts/toy.py --output_dir=results/toy

# The peer for scripts/benchmark.py: PyTorch (CPU build) + Storchastic in their
# own environment; nothing of theirs is imported by rebar_jax. Elsewhere, add
# PEER_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" for a CPU
# build of torch.
PEERS       := .venv-peers
PEER_TORCH  ?= torch==2.13.0
PEER_PIP_ARGS ?=
$(PEERS)/.installed:
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet $(PEER_PIP_ARGS) $(PEER_TORCH)
	$(PEERS)/bin/python -m pip install --quiet storchastic==0.3.7
	touch $@

peers: $(PEERS)/.installed

benchmark: $(BASE) $(PEERS)/.installed
	$(PY) scripts/benchmark.py --output_dir=results/benchmark --peer_python=$(PEERS)/bin/python

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache docs/_build docs/catalogue.md
