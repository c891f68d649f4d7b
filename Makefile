# Two commands do all the set-up on a fresh machine (Python >= 3.10):
#   make test   -- virtual environment in .venv, package + test extras, whole suite
#   make run    -- the main job (see README)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test run toy install clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,tfds]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 -q tests

run: $(STAMP)
	$(PY) scripts/toy.py --output_dir=results/toy

toy: run

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
