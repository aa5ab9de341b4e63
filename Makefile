# Quick start: `make run` (the main job: train and evaluate on the built-in synthetic data) and `make test`.
# Both create .venv with Python 3.11 and install what they need on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= workdir/synthetic

.PHONY: run test install
install: $(VENV)/.installed
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: install
	$(BIN)/python main.py --config=configs/synthetic.py --workdir=$(WORKDIR)

test: install
	$(BIN)/python -m pytest -n 2 tests
