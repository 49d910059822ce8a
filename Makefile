# Developer and CI entry points. Every target that needs the venv installs it first (idempotent).
.DEFAULT_GOAL := check
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp
QUEUE ?= default
# `make run WORKERS=3 HEAVY_WORKERS=2`: processes per queue (else WORKER_PROCESSES / HEAVY_WORKER_PROCESSES, 2 / 1)
RUN_ARGS = $(if $(WORKERS),--workers $(WORKERS)) $(if $(HEAVY_WORKERS),--heavy-workers $(HEAVY_WORKERS))

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Conveyor needs Python >= 3.11 (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,local]"
	@touch $(STAMP)

.PHONY: install
install: $(STAMP)

# `exec`: the shell make starts becomes `conveyor run`, so a signal to it reaches the supervisor directly.
.PHONY: run
run: install  ## gateway + workers (restarted if they crash); embedded Redis/PostgreSQL/mail catcher where none is configured
	exec $(BIN)/conveyor run $(RUN_ARGS)

.PHONY: run-api
run-api: install  ## the gateway alone; shares ./var's embedded servers with a `make run-worker` beside it
	exec $(BIN)/conveyor run --only gateway

.PHONY: run-worker
run-worker: install  ## the workers of QUEUE (default, heavy or scheduler) alone
	exec $(BIN)/conveyor run --only $(QUEUE) $(RUN_ARGS)

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

.PHONY: docs
docs: install  ## docs/configuration.md from the settings models
	$(BIN)/python -m devstack.configuration_doc

SOAK_S ?= 60

.PHONY: bench
bench: install  ## every hot-path target beside its same-run baseline; SOAK_S=600 for the 10-minute RSS figure
	$(BIN)/python bench/bench.py --soak-s $(SOAK_S)

.PHONY: soak
soak: install  ## make bench with the 10-minute end-to-end soak
	$(MAKE) bench SOAK_S=600

.PHONY: check
check: lint test

.PHONY: clean
clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .coverage htmlcov build dist src/*.egg-info
