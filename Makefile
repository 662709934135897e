# DeepVerticals — `make demo`, `make test`, `make bench`. Each creates .venv on first use and
# re-creates it whenever pyproject.toml changes.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DV_DATA_ROOT ?= $(CURDIR)/data
export PREFECT_HOME ?= $(CURDIR)/data/prefect
export MPLBACKEND ?= Agg

.PHONY: venv test test-quick lint demo bench serve-flows clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Every CPU test, slow and multi-process ones included. pytest exits 5 when it collects no
# test, which fails this target (and so CI) like any other failure.
test: lint
	$(PY) -m pytest -n 2 --dist loadgroup --timeout 900 --durations=15

# The quick loop while editing.
test-quick: $(STAMP)
	$(PY) -m pytest -n 2 -m "not slow"

demo: $(STAMP)
	$(PY) -m flows.demo

# A local Prefect server (127.0.0.1:4200, SQLite under PREFECT_HOME) serving the scheduled
# retraining deployments; Ctrl-C stops both.
serve-flows: $(STAMP)
	$(PY) -m flows.deployments --port 4200

bench: $(STAMP)
	$(PY) benchmarks/train_engine.py
	$(PY) benchmarks/compress.py
	$(PY) benchmarks/vision_qc.py
	$(PY) benchmarks/vision_qc_heldout.py
	$(PY) benchmarks/serve.py
	$(PY) benchmarks/finance_risk.py
	$(PY) benchmarks/nlp_service.py

clean:
	rm -rf $(VENV) data/runs data/mlflow data/prefect .pytest_cache
