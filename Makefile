# Two commands do all the set-up on a fresh machine (Python >= 3.10):
#   make test   -- virtual environment in .venv, package + test extras, whole suite
#   make run    -- the main job: train configs/sbn_mnist.py on the embedded digits
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BASE   := $(VENV)/.installed-base
TESTS  := $(VENV)/.installed-test

.PHONY: test run toy install clean

$(BASE): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(BASE)

# The test extras include TensorFlow + tensorflow-datasets: the TFDS loading
# path is tested for real, offline, from a manual directory.
$(TESTS): $(BASE)
	$(PY) -m pip install --quiet -e ".[test,tfds]"
	touch $(TESTS)

install: $(BASE)

test: $(TESTS)
	$(PY) -m pytest -n 2 -q tests

run: $(BASE)
	$(PY) -m rebar_jax.train --config=configs/sbn_mnist.py

toy: $(BASE)
	$(PY) scripts/toy.py --output_dir=results/toy

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
