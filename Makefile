# streambill: the two commands of the quick start, and a few for development.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: up test lint typecheck unit integration bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	@# the dashboards' chart library from the npm registry (pages work without it, minus charts)
	$(BIN)/python -m streambill.dashboards.vendor || echo "warning: dashboards without charts"
	touch $@

$(TEST_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## up: install into .venv (first run) and start the embedded stack with demo traffic
up: $(STAMP)
	STREAMBILL_DEMO=$${STREAMBILL_DEMO:-1} $(BIN)/streambill up

## test: install what the tests need, lint, type-check, run the whole suite
test: $(TEST_STAMP) lint typecheck
	$(BIN)/pytest

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

unit: $(TEST_STAMP)
	$(BIN)/pytest tests/unit src/streambill

integration: $(TEST_STAMP)
	$(BIN)/pytest tests/integration tests/e2e

## bench: run streambill bench against a fresh memory-mode embedded stack
bench: $(STAMP)
	bash bench/run_embedded.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
