# Two commands on a fresh machine (Python 3.11 + pip): `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_VERSION := 26.3

.PHONY: run test container-test lint coverage clean

run: $(VENV)/.deps-run
	$(BIN)/gunicorn -c config/gunicorn.conf.py app.asgi:app

# Prometheus and promtool (Debian's package): the tests lint and scrape the metrics.
PROMETHEUS := /usr/bin/prometheus

# Chromium (Debian's package): the chat page is tested in it, driven by Playwright.
CHROMIUM := /usr/bin/chromium

test: $(VENV)/.deps-test $(PROMETHEUS) $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The image, compose and the memory promise in real containers (podman; installed from
# Debian when missing). Skips, saying why, only where podman cannot run.
container-test: $(VENV)/.deps-test $(PROMETHEUS)
	$(BIN)/python -m pytest -m container -s tests/containers

# Branch coverage of app/, service subprocesses included (by hand; slower than `make test`).
coverage: $(VENV)/.deps-test $(PROMETHEUS) $(CHROMIUM)
	rm -rf .coverage
	$(BIN)/python -m coverage run -m pytest
	$(BIN)/python -m coverage combine --quiet
	$(BIN)/python -m coverage report

lint: $(VENV)/.deps-test
	$(BIN)/ruff check .
	$(BIN)/mypy

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==$(PIP_VERSION)

$(VENV)/.deps-run: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.deps-test: requirements.txt requirements-test.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	touch $@ $(VENV)/.deps-run

$(PROMETHEUS):
	apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null

$(CHROMIUM):
	apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
