# ordertrack: `make run` (the demo), `make test` (the suite), `make dev` (the UI).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Dagster's project CLI ([tool.dg] in pyproject.toml), told which environment is the project's.
DG := VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/dg
# `make test` runs the suite in this many worker processes, each with its own stack of local
# servers: the tests mostly wait on servers and subprocesses, so more workers than cores pay.
# The tests go out one by one, longest first; a module that starts servers of its own for all
# its tests stays on one worker, so they start once (ordertrack_dagster_tests/scheduling.py).
TEST_WORKERS ?= 3

LOCK_FLAGS := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28

.PHONY: install system-packages run dev test faults lint format bench bench-smoke deploy-check lock clean

# Exact versions and hashes from the lock file, then the project itself without resolving again.
# pip is pinned too: before 23.3 it refuses a hashed lock naming a dependency with an extra.
$(STAMP): pyproject.toml requirements/dev.lock
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==26.3
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# The deployment tests run a real PostgreSQL and photograph the UI in headless Chromium:
# Debian packages, installed here when missing (as root), named otherwise.
system-packages:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "the tests need the Debian packages:$$missing (apt-get install$$missing)"; exit 1; \
	fi

run: $(STAMP)  ## start the embedded stack, seed it, run every flow once, print a summary
	$(BIN)/python -m ordertrack_dagster.devstack run

dev: $(STAMP)  ## the embedded stack plus `dagster dev` on 127.0.0.1:3000
	$(BIN)/python -m ordertrack_dagster.devstack dev

test: $(STAMP) system-packages  ## lint, `dg check defs`, then the whole suite, fault suite included (it starts and stops its own servers)
	$(BIN)/ruff check ordertrack_dagster ordertrack_dagster_tests
	$(BIN)/ruff format --check ordertrack_dagster ordertrack_dagster_tests
	$(DG) check defs
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope

faults: $(STAMP)  ## the fault suite: each fault injected on the real servers (RELIABILITY.md)
	$(BIN)/python -m pytest -q -m faults ordertrack_dagster_tests/faults

lint: $(STAMP)
	$(BIN)/ruff check ordertrack_dagster ordertrack_dagster_tests

format: $(STAMP)
	$(BIN)/ruff format ordertrack_dagster ordertrack_dagster_tests
	$(BIN)/ruff check --fix ordertrack_dagster ordertrack_dagster_tests

bench: $(STAMP)  ## production-scale figures into BENCH.md and bench.json
	$(BIN)/python -m ordertrack_dagster.bench

bench-smoke: $(STAMP)  ## a few hundred orders, a few minutes
	$(BIN)/python -m ordertrack_dagster.bench --smoke

deploy-check: $(STAMP) system-packages  ## deploy/ checked offline and run on a local PostgreSQL
	$(BIN)/python -m pytest -q ordertrack_dagster_tests/deploy

lock: $(STAMP)  ## re-resolve the hashed lock files after a change of pyproject.toml
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) -q -o requirements/runtime.lock
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) -q --extra deploy -o requirements/deploy.lock
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) -q --extra dev -o requirements/dev.lock

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
