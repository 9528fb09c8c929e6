# The README's two set-up commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: demo test ui lint bench clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Every extra (all destinations, PostgreSQL, the UI) at the tested versions of constraints.txt.
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e ".[all]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -c constraints.txt -e ".[all,test]"
	$(BIN)/python -m prism_pipelines_tests.services install
	touch $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $@

## demo: fresh demo traffic in the embedded SQLite gateway, synced to ./archive through Dagster
demo: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml clean-demo
	$(BIN)/prism-pipelines seed-demo --rows 200000 --hours 24
	$(BIN)/prism-pipelines sync local_archive --since "$$($(BIN)/python -c 'import datetime as d; print((d.datetime.now(d.timezone.utc) - d.timedelta(hours=24)).isoformat())')"
	@echo
	@echo "Archive files: $(CURDIR)/archive/prism/demo/logs/YYYY/MM/DD/hour=HH/batch_*.jsonl.gz"
	@echo "Open the UI:   make ui   (then http://127.0.0.1:3000: asset prism/local_archive, its partitions and runs)"

clean-demo:
	rm -rf .prism/gateway.db* .prism/state.db* archive/prism/demo

## test: the test dependencies and services (moto, Azurite, fake-gcs-server, Pub/Sub emulator), ruff, pytest
test: $(VENV)/.installed-test
	$(BIN)/ruff check prism_pipelines prism_pipelines_tests bench
	$(BIN)/pytest -q -p no:cacheprovider prism_pipelines_tests

ui: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml

lint: $(VENV)/.installed-test
	$(BIN)/ruff check prism_pipelines prism_pipelines_tests bench
	$(BIN)/ruff format --check prism_pipelines prism_pipelines_tests bench

bench: $(VENV)/.installed-test
	$(BIN)/python bench/export_bench.py
