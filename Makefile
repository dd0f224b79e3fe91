# Two commands for a fresh machine (see README.md):
#   make demo   set everything up, then run the server with the demo page (SQLite events)
#   make test   set everything up, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 1234
DATA_DIR ?= rtc-data

.PHONY: demo test setup setup-test lint bench clean

demo: setup
	$(BIN)/rtc serve --port $(PORT) --data-dir $(DATA_DIR)

test: setup setup-test
	$(BIN)/python -m pytest

setup: $(VENV)/.installed tests/js/node_modules/.installed demo/dist/app.js

setup-test: /usr/bin/chromium /usr/bin/redis-server /usr/sbin/haproxy

lint: setup
	$(BIN)/ruff check rtc tracks tests bench
	$(BIN)/mypy

bench: setup bench/node_modules/.installed
	$(BIN)/python bench/bench_tracks.py
	$(BIN)/python bench/bench_store.py
	$(BIN)/python bench/bench_servers.py

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

%/node_modules/.installed: %/package.json %/package-lock.json
	npm ci --prefix $* --no-audit --no-fund
	touch $@

demo/dist/app.js: demo/node_modules/.installed $(wildcard demo/src/*)
	npm run build --prefix demo

# Debian's Chromium for the browser tests (CI runs as root; elsewhere sudo is used).
/usr/bin/chromium:
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq chromium

# Debian's Redis for the cluster tests (each test runs its own redis-server on a free port).
/usr/bin/redis-server:
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq redis-server

# Debian's HAProxy: the cluster tests run nodes behind a real load balancer.
/usr/sbin/haproxy:
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq haproxy

clean:
	rm -rf $(VENV) tests/js/node_modules demo/node_modules demo/dist bench/node_modules
