# The two set-up commands: `make run` (the service) and `make test` (the suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CLI := $(VENV)/bin/batchpress

.PHONY: run demo test bench worker cron clean

$(STAMP): requirements.txt requirements-embedded.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# The `batchpress` command (pyproject.toml), reinstalled whenever cli/ changes.
$(CLI): $(STAMP) pyproject.toml $(wildcard cli/*.py)
	$(PY) -m pip install --quiet --no-deps .
	rm -rf build batchpress.egg-info
	touch $(CLI)

run: $(STAMP) $(CLI)
	$(PY) -m api

# A first batch with no internet: sample photos on 127.0.0.1, the embedded service, the outputs
# and what was saved in ./demo-output (DEMO_ARGS=--keep leaves the service running).
demo: $(STAMP)
	$(PY) -m demo $(DEMO_ARGS)

worker: $(STAMP)
	$(PY) -m worker

cron: $(STAMP)
	$(PY) -m worker --cron

test: $(STAMP) $(CLI)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/pipeline.py

clean:
	rm -rf $(VENV) .pytest_cache demo-output
