# petseg developer entry points. Every target installs the pinned environment into .venv on first use.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint format clean

$(STAMP): requirements-torch.txt requirements.txt requirements-train.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-torch.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)  ## create .venv with the pinned dependencies (CPU torch first)

demo: $(STAMP)  ## the main job on shipped defaults: model/ on the sample cases in test/ -> masks, previews, Dice
	$(VENV)/bin/petseg demo --output demo-output

test: $(STAMP)  ## the whole test suite
	$(PY) -m pytest -q

test-fast: $(STAMP)  ## the suite without tests marked slow
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)  ## ruff, and the packages' layering (import-linter contracts in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
