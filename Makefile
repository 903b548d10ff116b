# Two entry points for a new user: `make demo` (install, then run the main job on the default model)
# and `make test` (install with test extras, then run the test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The shared datasets folder, read in place (never copied): ../shared/data beside the clone.
export SML_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install install-test demo test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

demo: install
	$(BIN)/sml run configs/demo.yaml --out runs/demo

test: install-test
	$(BIN)/python -m pytest -q
