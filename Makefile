# One command runs every check: `make test`. It creates the virtualenv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck unit install demo bench clean

test: install lint typecheck unit

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check orchestrator tests
	$(BIN)/ruff format --check orchestrator tests

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest

demo: install
	$(BIN)/cph-orchestrator demo

bench: install
	$(BIN)/python -m orchestrator.benchmark

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
