# The two commands that matter: `make run` and `make test`. Both set everything up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: install run test lint browser front openapi bench bench-growth chaos fuzz clean

# Installs the lock, not the ranges: requirements/dev.txt pins every package (the runtime
# set, the dev extras and the tools make test runs) with its files' hashes; pyproject.toml
# keeps the ranges (requirements/README.md: how to re-lock). Again when either changes.
$(STAMP): requirements/dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/cpr db upgrade
	$(BIN)/cpr demo bootstrap
	@echo "Serving on http://$(HOST):$(PORT)  (Ctrl-C to stop)"
	$(BIN)/uvicorn app.main:create_app --factory --host $(HOST) --port $(PORT) --no-access-log

# Both cores (pytest-xdist): the tests that start real processes run on one worker, in turn.
test: install lint browser front
	$(BIN)/pytest -n 2 --dist loadgroup

# The web client's browser tests (tests/test_web_browser.py) drive Debian's Chromium (its
# en-GB locale from chromium-l10n: dates as dd/mm/yyyy) and inject axe-core, the npm
# package pinned by tests/axe/package-lock.json (npm ci, again when the lock changes).
# Installed when they can be (root, apt, the npm registry); without them those tests
# skip, or fail under CI.
AXE := tests/axe/node_modules/axe-core/axe.min.js

browser: $(AXE)
	@(command -v chromedriver >/dev/null && test -f /usr/lib/chromium/locales/en-GB.pak) \
		|| (apt-get update -qq && apt-get install -y -qq chromium chromium-driver chromium-l10n) \
		|| echo "Chromium not installed: tests/test_web_browser.py will skip"

$(AXE): tests/axe/package.json tests/axe/package-lock.json
	@command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs npm) \
		|| echo "npm not installed: tests/test_web_browser.py will skip"
	@(cd tests/axe && npm ci --no-audit --no-fund --silent && touch node_modules/axe-core/axe.min.js) \
		|| echo "axe-core not installed: tests/test_web_browser.py will skip"

# The TLS / mutual-TLS front's test (tests/test_front.py) runs Debian's nginx with the
# committed template. Installed when it can be (root, apt), without starting the distribution's
# own service; without it that test skips, or fails under CI.
front:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || (apt-get update -qq \
		&& RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light \
		|| RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx) \
		|| echo "nginx not installed: tests/test_front.py will skip"

lint: install
	$(BIN)/ruff check app tests migrations bench
	$(BIN)/ruff format --check app tests migrations bench
	$(BIN)/yamllint --strict deploy .yamllint
	$(BIN)/mypy app
	$(BIN)/lint-imports

# Issue 6: throughput and latency of the audited lookup against its floor and ceiling,
# on PostgreSQL and SQLite (docs/performance.md). BENCH_DURATION=5 for a quick run.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python -m bench.run

# Issue 18: what the log's size costs (docs/performance.md, "Costs as the log grows"): a
# small log (GROWTH_SMALL events) and a grown one (GROWTH_EVENTS, 2 million; 10 million
# in a long run) side by side, on PostgreSQL: sealing, the volume limits, every custodian
# read (p50/p99, buffers), verification; then the lookup under load (sealing on) over a
# log of GROWTH_EVENTS past lookups beside one of GROWTH_SMALL, GROWTH_ROUNDS interleaved
# rounds (bench/interleaved.py).
GROWTH_EVENTS ?= 2000000
GROWTH_SMALL ?= 20000
GROWTH_ROUNDS ?= 6
bench-growth: $(BENCH_STAMP)
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python -m bench.growth --sizes $(GROWTH_SMALL),$(GROWTH_EVENTS) --verify
	BENCH_CONNECTIONS=32 $(BIN)/python -m bench.interleaved --sizes $(GROWTH_SMALL),$(GROWTH_EVENTS) --rounds $(GROWTH_ROUNDS)

# Issue 11: the long fault-injection variants (tests/test_production_faults.py, marker
# `chaos`; `make test` runs the short ones): a private PostgreSQL 15 cluster stopped, frozen
# and killed under load, the service killed and stopped. Needs root (README, Fault tests).
chaos: install front
	$(BIN)/pytest -m chaos tests/test_production_faults.py tests/test_worker.py tests/test_front.py

openapi: install
	$(BIN)/cpr openapi

# Issue 13: schemathesis against the committed OpenAPI for longer than `make test` does
# (tests/test_contract.py): FUZZ_EXAMPLES per operation, every role over every operation,
# on PostgreSQL set up as production's (FUZZ_BACKEND=sqlite for the embedded database).
# FUZZ_SEED=n repeats a run.
FUZZ_EXAMPLES ?= 200
FUZZ_BACKEND ?= postgresql
fuzz: install
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_BACKEND=$(FUZZ_BACKEND) FUZZ_SEED=$(FUZZ_SEED) \
		$(BIN)/pytest -s tests/test_contract.py -k schemathesis

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info tests/axe/node_modules
