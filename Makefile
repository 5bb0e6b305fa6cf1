# Commands for users: `make quickstart` (the whole loop on a small subset, minutes), `make pipeline`
# (the whole job) and `make test` (the test suite). FETAL_MIRROR=../shared/data points the ingest
# stages at a local mirror of the official sources. Prefect's settings (its home, .prefect/) are
# in prefect.toml, read by every Prefect process started here, with or without make.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo .venv-uv/bin/uv)
VENV := .venv
PY := $(VENV)/bin/python
# test processes: 2 fits the 2-core, 24 GB CI machine (each may load TensorFlow)
TEST_WORKERS ?= 2
export UV_COMPILE_BYTECODE := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONPATH := $(CURDIR)
# A relative FETAL_MIRROR (../shared/data) means relative to this folder, in every process.
ifneq ($(strip $(FETAL_MIRROR)),)
export FETAL_MIRROR := $(abspath $(FETAL_MIRROR))
endif
# dvc.yaml commands say `python`: make it the project venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup quickstart pipeline test test-fast lint bench deploy ui mlflow-ui serve services clean

.venv-uv/bin/uv:
	python3 -m venv .venv-uv && .venv-uv/bin/pip install -q uv==0.13.9

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra e2e
	touch $@

setup: $(VENV)/.synced  ## create .venv from the lock file

# Stages register versions (alias challenger); champions move only after the outputs are on the
# DVC remote: dvc repro, then dvc push, then fetal promote (which checks the push and decides).
pipeline: setup  ## run every DVC stage that is out of date, push its outputs, decide champions
	$(VENV)/bin/dvc repro
	$(VENV)/bin/dvc push
	$(VENV)/bin/fetal promote
	$(VENV)/bin/fetal summary

# The whole loop (every stage, dvc push, champions, the summary, a Prefect flow run) on a small
# subset of the mirror (quickstart/params.yaml), in .quickstart/: its own copy of the code, DVC
# cache and remote and MLflow store; the project's Prefect home, so `make ui` shows the run.
quickstart: setup  ## a smoke run of the whole loop in minutes (needs FETAL_MIRROR)
	$(PY) -m flows.quickstart

test: setup  ## the whole test suite (CI runs this), one test file per worker process
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: setup  ## unit and data tests only
	$(PY) -m pytest -q -m "unit or data"

lint: setup
	$(VENV)/bin/ruff check stages flows tests bench experiments
	$(VENV)/bin/ruff format --check stages flows tests bench experiments

# Every module of bench/ with a main() (tests/unit/test_bench_target.py checks the list), with
# the arguments of the tables in docs/benchmarks.md; serving: the idle-machine target command.
bench: setup  ## print the benchmark tables (needs FETAL_MIRROR)
	$(PY) -m bench.ctg
	$(PY) -m bench.ultrasound
	$(PY) -m bench.segmenter_cost
	$(PY) -m bench.noop --repeats 3
	$(PY) -m bench.dvc_floor --repeats 5
	$(PY) -m bench.startup
	$(PY) -m bench.determinism
	$(PY) -m bench.serving --workers 2 --payload records compact parquet --bad-every 0
# Last: a real `dvc repro` of this project, timed per stage. It reruns only what is out of date
# (on a built project: none, it lists the skipped stages), so it never retrains needlessly.
	$(PY) -m bench.pipeline_times

deploy: setup  ## serve the scheduled retraining and monitoring flows (needs a Prefect server)
	$(PY) -m flows.deploy

ui: setup  ## the Prefect UI on http://127.0.0.1:4200 (local, open: for the secured one, `make services`)
	$(VENV)/bin/prefect server start --host 127.0.0.1

# MLFLOW_UI_STORE=sqlite:///.quickstart/mlflow.db shows the quickstart's registry instead.
MLFLOW_UI_STORE ?= sqlite:///mlflow.db
MLFLOW_UI_PORT ?= 5000
mlflow-ui: setup  ## the MLflow UI on http://127.0.0.1:5000 (local, open: for the secured one, `make services`)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --host 127.0.0.1 --port $(MLFLOW_UI_PORT) \
	  --backend-store-uri $(MLFLOW_UI_STORE) --default-artifact-root ./mlartifacts

# The shared services for several machines, each behind its tool's own authentication (MLflow
# basic-auth app, Prefect auth string, Dask mutual TLS), bound to SERVICES_HOST; credentials are made on
# first start in .secrets/ (0600, git-ignored). Clients: `source .secrets/client.env`.
SERVICES_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
PREFECT_PORT ?= 4200
DASK_PORT ?= 8786
# MLFLOW_BACKEND (e.g. postgresql://...) and MLFLOW_ARTIFACTS default to mlflow.db and mlartifacts/.
MLFLOW_BACKEND ?=
MLFLOW_ARTIFACTS ?=
services: setup  ## MLflow, Prefect and a Dask scheduler on SERVICES_HOST, secured (docs/operations.md#security)
	$(PY) -m stages.common.services start --host $(SERVICES_HOST) --mlflow-port $(MLFLOW_PORT) \
	  --prefect-port $(PREFECT_PORT) --dask-port $(DASK_PORT) \
	  $(if $(MLFLOW_BACKEND),--backend-store-uri $(MLFLOW_BACKEND)) \
	  $(if $(MLFLOW_ARTIFACTS),--artifacts-destination $(MLFLOW_ARTIFACTS))

# The CTG champion behind a Bearer token ($$FETAL_SERVE_TOKEN or .secrets/serve-token) and a
# body-size cap (serve.max_body_kb); SERVE_HOST=0.0.0.0 to reach it from other machines.
SERVE_MODEL ?= models:/ctg-distress@champion
SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 5001
serve: setup  ## serve the CTG champion over HTTP on http://$(SERVE_HOST):$(SERVE_PORT)/invocations
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} \
	  $(VENV)/bin/fetal serve --model $(SERVE_MODEL) --host $(SERVE_HOST) --port $(SERVE_PORT)

clean:
	rm -rf .venv .venv-uv
