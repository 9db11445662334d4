# Esper — `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
# The virtualenv lives outside the checkout, keyed by the dependency lock and the
# Python version, so fresh clones (CI) reuse it and a changed lock gets a new one.
ESPER_CACHE ?= $(HOME)/.cache/esper
LOCK_HASH := $(shell cat requirements.lock | $(PYTHON) -c "import sys, hashlib, platform; print(hashlib.sha256(sys.stdin.buffer.read() + platform.python_version().encode()).hexdigest()[:16])")
VENV ?= $(ESPER_CACHE)/venv-$(LOCK_HASH)
PY := $(VENV)/bin/python
ESPER := PYTHONPATH=$(CURDIR) $(PY) -m services.cli
PYTEST_ARGS ?=

.PHONY: help venv venv-path up down demo status broker broker-stop schemas schemas-check test test-unit test-integration bench fuzz clean clean-state

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

venv-path:
	@echo $(VENV)

venv: $(VENV)/.installed $(VENV)/.scatter ## create the cached virtualenv with every dependency

# torch-scatter (the optional scatter backend) has no wheels on PyPI: build it once from
# source against the venv's torch (~10 min on 2 cores) and keep the wheel outside the clone.
TORCH_SCATTER ?= torch-scatter==2.1.2
WHEELS := $(ESPER_CACHE)/wheels
$(VENV)/.scatter: $(VENV)/.installed
	@$(VENV)/bin/pip install -q --no-index --find-links $(WHEELS) "$(TORCH_SCATTER)" 2>/dev/null || { \
	  echo "building $(TORCH_SCATTER) from source (once; cached in $(WHEELS))"; \
	  $(VENV)/bin/pip wheel -q --no-build-isolation --no-deps -w $(WHEELS) "$(TORCH_SCATTER)" && \
	  $(VENV)/bin/pip install -q --no-index --find-links $(WHEELS) "$(TORCH_SCATTER)"; }
	touch $@

$(VENV)/.installed: requirements.lock
	@echo "setting up $(VENV) (first time: torch is a large download)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.lock
	touch $@

up: venv ## install everything, start the broker, create the topics, start the services
	$(ESPER) up

down: venv ## stop the services and the local broker (data is kept)
	$(ESPER) down

demo: venv ## on a running system (make up): adaptive run vs --no-adapt baseline, SQL comparison, HTML report
	$(ESPER) demo

status: venv ## broker and services: up or down
	$(ESPER) status

broker: venv ## start only the local single-node Kafka
	$(ESPER) broker start

broker-stop: venv ## stop the local single-node Kafka
	$(ESPER) broker stop

schemas: venv ## regenerate schemas/*.avsc (+ history and fixture logs) from contracts/
	$(ESPER) schemas generate
	PYTHONPATH=$(CURDIR) $(PY) -m tests.fixtures.write_fixture_logs

schemas-check: venv ## fail if schemas/ drifted from contracts/ or history breaks FULL_TRANSITIVE
	$(ESPER) schemas check

test: venv ## the whole suite, including integration tests on a real broker (started if needed)
	PYTHONPATH=$(CURDIR) $(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv ## unit tests only (no broker)
	PYTHONPATH=$(CURDIR) $(PY) -m pytest tests/unit $(PYTEST_ARGS)

bench: venv ## benchmarks: side-by-side ratios, JSON in bench-results/
	$(ESPER) bench

FUZZ_CASES ?= 1000000
FUZZ_SEED ?= 11
fuzz: venv ## differential fuzzing of the Avro decoders against fastavro (FUZZ_CASES per decoder, FUZZ_SEED)
	PYTHONPATH=$(CURDIR) $(PY) -m tests.fuzz.avro_differential --cases $(FUZZ_CASES) --seed $(FUZZ_SEED)

clean: ## remove caches inside the checkout (not the data)
	rm -rf .cache .pytest_cache bench-results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-state: down ## stop and delete all local data (broker log, DuckDB files)
	rm -rf .state
