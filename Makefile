# Two commands: `make run` starts the hub, `make test` runs the whole suite (`make test-fast`: all but live tests).
# Both create .venv and install the pinned requirements on first use (again only when they change).

# Any Python 3.11+; `make run PYTHON=python3.12` picks another interpreter.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test test-fast demo bench lint clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): requirements.txt sidecar/pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

$(DEV_STAMP): requirements.txt requirements-dev.txt sidecar/pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $(STAMP) $@

run: $(STAMP)
	$(PY) -m agentcom_site.launcher run

demo: $(DEV_STAMP)
	$(PY) -m agentcom_site.launcher demo

test: $(DEV_STAMP)
	$(PY) -m agentcom_site.launcher test $(PYTEST_ARGS)

# Everything but the tests marked `live` (they start daphne, Celery or Chromium): for iterating.
test-fast: $(DEV_STAMP)
	$(PY) -m agentcom_site.launcher test -m "not live" $(PYTEST_ARGS)

bench: $(DEV_STAMP)
	$(PY) -m agentcom_site.launcher bench

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) run
