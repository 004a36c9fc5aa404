# The front door: `make run`, `make test`, `make lint`, `make bench` (the README says the same).
# Needs only python3 (and node/npm for the JS client tests); everything else comes from
# requirements.lock into .venv, including the NATS and PostgreSQL servers.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-installs only when the lock or the project metadata change.
STAMP := $(VENV)/.installed
JS_DIR := tests/js
JS_STAMP := $(JS_DIR)/node_modules/.installed
# The Next.js example app (examples/nextjs-chat), which the browser suite builds and drives.
NEXTJS_DIR := examples/nextjs-chat
NEXTJS_STAMP := $(NEXTJS_DIR)/node_modules/.installed
PYTEST_ARGS ?=
# apt-get needs root; as another user, sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.DEFAULT_GOAL := help
.PHONY: help install browser run test test-slow test-all lint format bench soak lock clean clean-state

help:
	@echo "make install      create .venv and install the pinned dependencies (idempotent)"
	@echo "make run          start the whole stack locally (byorouter dev); Ctrl-C stops it"
	@echo "make test         fast test suites (everything not marked slow)"
	@echo "make test-slow    only the slow suites (browser, chaos); CI runs them after make test"
	@echo "make test-all     every test suite in one run"
	@echo "make lint         ruff check, ruff format --check, mypy --strict"
	@echo "make format       ruff format and safe fixes"
	@echo "make bench        the benchmark (python -m bench)"
	@echo "make soak         the stack under load for SOAK_MINUTES (20), failing on growth (not CI)"
	@echo "make lock         regenerate requirements.lock files (hashes) after a dependency change"
	@echo "make clean        remove .venv, caches and node_modules"
	@echo "make clean-state  remove .byorouter/ (dev database, keyring, logs)"

install: $(STAMP) $(if $(wildcard $(JS_DIR)/package-lock.json),$(JS_STAMP)) \
		$(if $(wildcard $(NEXTJS_DIR)/package-lock.json),$(NEXTJS_STAMP))

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.lock pyproject.toml clients/tunnel/pyproject.toml \
		clients/tunnel/requirements.lock | $(BIN)/python
	@# Every package is checked against the lock's hashes; our own are built with the locked
	@# setuptools (no build isolation), so nothing unpinned is fetched.
	$(BIN)/python -m pip install --disable-pip-version-check -q --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation \
		-e . -e clients/tunnel
	@# The tunnel service serves this wheel at /client, so users install the client from here.
	rm -rf clients/tunnel/dist
	$(BIN)/python -m pip wheel --disable-pip-version-check -q --no-deps --no-build-isolation \
		-w clients/tunnel/dist ./clients/tunnel
	cp clients/tunnel/requirements.lock clients/tunnel/dist/
	rm -rf clients/tunnel/build
	@touch $@

$(JS_STAMP): $(JS_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd $(JS_DIR) && npm ci --no-audit --no-fund && touch node_modules/.installed; \
	else \
		echo "npm not found: skipping the JS client tests' dependencies"; \
	fi

# Without npm the Next.js example's browser test skips (and fails under CI=true).
$(NEXTJS_STAMP): $(NEXTJS_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd $(NEXTJS_DIR) && npm ci --no-audit --no-fund && touch node_modules/.installed; \
	else \
		echo "npm not found: skipping the Next.js example's dependencies"; \
	fi

run: install
	$(BIN)/byorouter dev

test: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The browser suites drive Debian's Chromium through Playwright (no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser tests"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

# pytest exits 5 when no test is marked slow yet; that is not a failure.
test-slow: install browser
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-all: install browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy clients libs cli services bench examples/chat-app/app.py

# The locks are a reviewed change: this keeps every existing pin and adds what pyproject.toml now
# asks for; `make lock UPGRADE="--upgrade-package httpx"` moves one package. Read the diff (new
# packages, changed versions, changed hashes) before committing it; docs/operations.md says how.
UPGRADE ?=
LOCK := $(BIN)/uv pip compile --universal --python-version 3.11 --generate-hashes --quiet \
	--custom-compile-command "make lock"
lock: install
	$(LOCK) pyproject.toml --extra dev -o requirements.lock $(UPGRADE)
	$(LOCK) clients/tunnel/pyproject.toml -c requirements.lock -o clients/tunnel/requirements.lock

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m bench

# Not in CI: 20 minutes by default; `make soak SOAK_MINUTES=2` for a quick look.
SOAK_MINUTES ?= 20
soak: install
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache $(JS_DIR)/node_modules \
		$(NEXTJS_DIR)/node_modules $(NEXTJS_DIR)/.next
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

clean-state:
	rm -rf .byorouter
