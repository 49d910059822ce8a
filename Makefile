# Developer and CI entry points. Every target that needs the venv installs it first (idempotent).
.DEFAULT_GOAL := check
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp
QUEUE ?= default

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Conveyor needs Python >= 3.11 (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

.PHONY: install
install: $(STAMP)

.PHONY: run
run: install  ## gateway + every worker; embedded Redis/PostgreSQL/mail catcher where none is configured
	$(BIN)/conveyor run

.PHONY: run-api
run-api: install
	$(BIN)/conveyor run --only gateway

.PHONY: run-worker
run-worker: install
	$(BIN)/conveyor run --only $(QUEUE)

.PHONY: format
format: install
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

.PHONY: lint
lint: install
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src tests bench
	$(BIN)/lint-imports

.PHONY: test
test: install
	$(BIN)/python -m pytest --cov --cov-report=term

.PHONY: bench
bench: install
	$(BIN)/python bench/bench.py

.PHONY: check
check: lint test

.PHONY: clean
clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .coverage htmlcov src/*.egg-info
