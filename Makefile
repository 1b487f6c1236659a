# LiteLLM Memory Proxy. `make run` serves, `make test` tests; both set up .venv themselves.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# pyenv shims only run the versions PYENV_VERSION names: make every installed one runnable,
# unless the user chose some themselves.
ifeq ($(strip $(PYENV_VERSION)),)
  PYENV_VERSION := $(shell command -v pyenv >/dev/null 2>&1 && pyenv versions --bare 2>/dev/null | grep -E '^[0-9]+\.[0-9]+\.[0-9]+$$' | sort -rV | paste -sd: -)
endif
export PYENV_VERSION

# The newest interpreter (>= 3.11) that actually runs; override with `make run PYTHON=python3.11`.
# ($(shell) does not see exported variables before GNU make 4.4, hence the explicit prefix.)
WITH_PYENV := PYENV_VERSION=$(PYENV_VERSION)
ifndef PYTHON
  PYTHON := $(shell for p in python3.14 python3.13 python3.12 python3.11 python3; do \
	$(WITH_PYENV) $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { echo $$p; break; }; done)
endif
VENV ?= .venv
PY_VERSION := $(shell $(WITH_PYENV) $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
STAMP := $(VENV)/.installed-py$(PY_VERSION)

LISTEN_HOST ?= 127.0.0.1
PROXY_PORT ?= 8080
GATEWAY_PORT ?= 8764
# mitmproxy's reverse mode needs a target, but the addon answers or reroutes every gateway
# request, so it is never dialled; the reserved name makes any escape fail instead of leak.
GATEWAY_UPSTREAM ?= http://memory-routing.localhost
CONFIG ?= config.yaml
MITM_ARGS ?=
WEB_PORT ?= 8081
# Proxy authentication without the password on the command line (it would be echoed and in ps):
# a file holding user:password, or MEMORY_ROUTING_PROXYAUTH in the environment.
PROXYAUTH_FILE ?=

# LiteLLM otherwise downloads its model price list at import time.
export LITELLM_LOCAL_MODEL_COST_MAP := True

PROXY_ARGS = -s addon.py \
	--listen-host $(LISTEN_HOST) \
	--mode regular@$(PROXY_PORT) \
	--mode reverse:$(GATEWAY_UPSTREAM)@$(GATEWAY_PORT) \
	--set connection_strategy=lazy \
	--set memory_routing_config=$(CONFIG) \
	$(if $(PROXYAUTH_FILE),--set memory_routing_proxyauth_file=$(PROXYAUTH_FILE)) \
	$(MITM_ARGS)

.PHONY: help run web test lint chromium node-clients fleet-servers bench bench-memory bench-fleet venv ca-bundle lock clean

help:
	@echo "make run     start the proxy: forward proxy $(LISTEN_HOST):$(PROXY_PORT), gateway $(LISTEN_HOST):$(GATEWAY_PORT)"
	@echo "make web     the same under mitmweb (flows in the browser at 127.0.0.1:$(WEB_PORT), WEB_PORT=...)"
	@echo "make test    ruff, mypy and the test suite (installs the pinned Claude Code CLI with npm when npm is there)"
	@echo "make bench   CPU time/request, start-up, RSS and latency of the addon vs bare mitmdump (about ten"
	@echo "             minutes; BENCH_ARGS='--quick' about four, BENCH_ARGS='--json out.json' for the figures)"
	@echo "make bench-memory  replay LoCoMo (../shared/data/locomo-dev.json) through the proxy: memory recall,"
	@echo "             injected size, latency (BENCH_MEMORY_ARGS='--conversations conv-26 --store-size 100000')"
	@echo "make bench-fleet  the fleet's backends (throwaway PostgreSQL + Redis) against the default: CPU per call,"
	@echo "             throughput of 1 and 2 proxies, recall on PostgreSQL, added latency (BENCH_FLEET_ARGS='--quick')"
	@echo "make ca-bundle  write ~/.mitmproxy/ca-bundle.pem (usual roots + mitmproxy CA) for SSL_CERT_FILE"
	@echo "make lock    re-resolve requirements.lock from pyproject.toml (needs the network)"
	@echo "Python: $(PYTHON) ($(PY_VERSION)); venv: $(VENV)"

venv: $(STAMP)

$(STAMP): requirements.lock
	@if [ -z "$(PY_VERSION)" ]; then echo "No Python >= 3.11 found; pass PYTHON=/path/to/python3.x" >&2; exit 1; fi
	@# A venv built by another interpreter version cannot be reused: start over.
	@if [ -d $(VENV) ] && [ "$$($(VENV)/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" != "$(PY_VERSION)" ]; then \
		echo "Recreating $(VENV) for Python $(PY_VERSION)"; rm -rf $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	@rm -f $(VENV)/.installed-py*
	@touch $@

run: $(STAMP)
	$(VENV)/bin/mitmdump $(PROXY_ARGS)

web: $(STAMP)
	$(VENV)/bin/mitmweb --set web_port=$(WEB_PORT) $(PROXY_ARGS)

test: $(STAMP) chromium node-clients fleet-servers lint
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# ruff and mypy (settings in pyproject.toml); part of `make test`, so CI runs them on every Python.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The browser tests drive Debian's chromium through Playwright (never Playwright's own download).
# As root (CI) it is installed when missing; otherwise those tests skip and say why.
chromium:
	@command -v chromium >/dev/null 2>&1 || [ -n "$$MEMORY_ROUTING_CHROMIUM" ] || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "Installing Debian's chromium for the browser tests"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
		else \
			echo "chromium not found: the browser tests will be skipped (sudo apt-get install chromium)" >&2; \
		fi; }

# The fleet tests start throwaway PostgreSQL and Redis servers (Debian's packages) on free ports.
# As root (CI) they are installed when missing; otherwise those tests skip and say why.
fleet-servers:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "Installing Debian's postgresql and redis-server for the fleet tests"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server; \
		else \
			echo "postgresql or redis-server not found: the fleet tests will be skipped (sudo apt-get install postgresql redis-server)" >&2; \
		fi; fi

# The real Claude Code CLI the end-to-end tests drive, pinned with integrity hashes in
# tests/node/package-lock.json. --ignore-scripts: its native binary comes as an npm package of its
# own (@anthropic-ai/claude-code-<platform>); nothing is downloaded from elsewhere.
node-clients:
	@if ! command -v npm >/dev/null 2>&1; then echo "npm not found: the Claude Code end-to-end tests will skip" >&2; \
	elif [ ! tests/node/node_modules/.package-lock.json -nt tests/node/package-lock.json ]; then \
		cd tests/node && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error; fi

# CPU time per request, start-up and RSS in alternating fresh-process rounds, wall-clock figures,
# plus callgrind instruction counts (needs valgrind; skipped without it).
bench: $(STAMP)
	$(VENV)/bin/python bench/bench.py $(BENCH_ARGS)

# Memory quality and latency on LoCoMo dialogues, read from ../shared/data/ (never copied here;
# skipped with a message when absent).
bench-memory: $(STAMP)
	$(VENV)/bin/python bench/memory_replay.py $(BENCH_MEMORY_ARGS)

# The fleet's backends against the single-machine default; starts its own throwaway PostgreSQL
# and Redis (Debian's packages, installed by fleet-servers when run as root).
bench-fleet: $(STAMP) fleet-servers
	$(VENV)/bin/python bench/fleet.py $(BENCH_FLEET_ARGS)

ca-bundle: $(STAMP)
	$(VENV)/bin/python -m memory_routing.mitm.ca_bundle $(if $(CONFDIR),--confdir $(CONFDIR))

# Maintainers only: resolves for Python 3.11 through the newest, mitmproxy and litellm together.
lock:
	$(PYTHON) -m venv .lock-tools
	.lock-tools/bin/python -m pip install --quiet uv==0.13.9
	.lock-tools/bin/uv pip compile pyproject.toml --extra test --universal --generate-hashes \
		--python-version 3.11 --index-url https://pypi.org/simple -o requirements.lock

clean:
	rm -rf .venv .venv-py* .lock-tools .pytest_cache tests/node/node_modules
