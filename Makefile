# The two commands that matter: `make run` and `make test`. Both set everything up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: install run test lint browser openapi bench chaos clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/cpr db upgrade
	$(BIN)/cpr demo bootstrap
	@echo "Serving on http://$(HOST):$(PORT)  (Ctrl-C to stop)"
	$(BIN)/uvicorn app.main:create_app --factory --host $(HOST) --port $(PORT) --no-access-log

test: install lint browser
	$(BIN)/pytest

# The web client's browser test (tests/test_web_browser.py) drives Debian's Chromium.
# Installed when it can be (root, apt); without it that test skips, or fails under CI.
browser:
	@command -v chromedriver >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) \
		|| echo "Chromium not installed: tests/test_web_browser.py will skip"

lint: install
	$(BIN)/ruff check app tests migrations bench
	$(BIN)/ruff format --check app tests migrations bench

# Issue 6: throughput and latency of the audited lookup against its floor and ceiling,
# on PostgreSQL and SQLite (docs/performance.md). BENCH_DURATION=5 for a quick run.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python -m bench.run

# Issue 11: the long fault-injection variants (tests/test_production_faults.py, marker
# `chaos`; `make test` runs the short ones): a private PostgreSQL 15 cluster stopped, frozen
# and killed under load, the service killed and stopped. Needs root (README, Fault tests).
chaos: install
	$(BIN)/pytest -m chaos tests/test_production_faults.py

openapi: install
	$(BIN)/cpr openapi

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info
