# torchferry: `make demo` serves a freshly trained model; `make test` runs the test suite;
# `make lint` checks style, types and import layers.
# Each creates ./.venv on first use and reinstall only when pyproject.toml changes.

PYTHON ?= $(if $(shell command -v python3.11 2>/dev/null),python3.11,python3)
VENV := .venv
BIN := $(VENV)/bin
# The exact pin matters: a CPU build of this version lies on the machine's disk, and any
# looser spec would download gigabytes of CUDA wheels.
TORCH := torch==2.13.0
STORE := ./model-store
HOST := 127.0.0.1
PORT := 8080

.PHONY: demo test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# One stamp per extra ("demo", "test"): redone when pyproject.toml changes.
# pip compiles each package's bytecode one file at a time; compileall does the whole venv on
# every core (a minute less on 2 cores for the test extra's ~20,000 files). Bytecode matters
# where PYTHONDONTWRITEBYTECODE is set: nothing would be compiled at import. Files that do
# not compile under this Python (other versions' syntax, templates) are skipped, as pip
# skips them.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --no-compile $(TORCH)
	$(BIN)/python -m pip install -q --no-compile -e '.[$*]'
	-$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null 2>&1
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/python -m torchferry.demo build --store $(STORE)
	@echo
	@$(BIN)/python -m torchferry.demo curl --url http://$(HOST):$(PORT)
	@echo
	$(BIN)/torchferry serve --store $(STORE) --host $(HOST) --port $(PORT)

# -n auto: a worker per core (at most 4), each taking whole test files, so a module's
# shared server is started once
# compileall first: pip compiles every package it installs but not an editable install's
# own source, and where PYTHONDONTWRITEBYTECODE is set (as on these machines) every server,
# worker and CLI process the tests start would otherwise compile torchferry again in memory
# (~0.5 s of CPU each, hundreds of processes); up-to-date files are skipped
test: $(VENV)/.installed-test
	$(BIN)/python -m compileall -q src
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile

# ruff (style and bugs), mypy (types, see [tool.mypy]) and import-linter (the layers of
# docs/architecture.md, see [tool.importlinter]); all configured in pyproject.toml.
lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(VENV)/.installed-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(VENV)/.installed-test
	$(BIN)/python bench/serve_vs_raw.py
	$(BIN)/python bench/protocols.py
	$(BIN)/python bench/hot_path.py
	$(BIN)/python bench/workers.py
	$(BIN)/python bench/swap.py
	$(BIN)/python bench/optimize_figures.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
