# Esper — `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
# Two environments, so that every checkout (a worktree, CI's fresh clone beside it) is fast and runs its OWN code:
# - the dependencies (torch alone is gigabytes) live in ONE virtualenv outside the checkout, keyed by the lock and
#   the Python version: clones share it, and a changed lock gets a new one. Nothing of the project goes in there:
#   an editable install into a shared venv would point every checkout at whichever one installed last.
# - the project is installed editable in a thin per-checkout `.venv/` (git-ignored, no packages of its own): a .pth
#   file there adds the shared venv's site-packages to sys.path, and `pip install --no-deps -e .` adds an import
#   hook for THIS checkout and the `esper` entry point. It is built in about two seconds, so fresh clones stay fast.
ESPER_CACHE ?= $(HOME)/.cache/esper
LOCK_HASH := $(shell cat requirements.lock | $(PYTHON) -c "import sys, hashlib, platform; print(hashlib.sha256(sys.stdin.buffer.read() + platform.python_version().encode()).hexdigest()[:16])")
DEPS_VENV ?= $(ESPER_CACHE)/venv-$(LOCK_HASH)
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
ESPER := $(VENV)/bin/esper
PYTEST_ARGS ?=

.PHONY: help venv venv-path up down demo status broker broker-stop schemas schemas-check lint test test-unit test-integration test-cluster learn bench fuzz clean clean-state

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

venv-path:
	@echo $(VENV)

venv: $(VENV)/.installed-$(LOCK_HASH) ## the project installed editable in .venv/, over the cached dependency virtualenv

PURELIB := -c "import sysconfig; print(sysconfig.get_path('purelib'))"
# The stamp names the lock: a changed lock (another shared venv) rebuilds the thin venv around the new one.
$(VENV)/.installed-$(LOCK_HASH): $(DEPS_VENV)/.scatter pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv --without-pip $(VENV)
	echo "import site; site.addsitedir('$$($(DEPS_VENV)/bin/python $(PURELIB))')" > "$$($(PY) $(PURELIB))/esper-dependencies.pth"
	@# (setuptools warns that ./services may shadow the installed package: here they are the same folder)
	PYTHONWARNINGS="ignore:Editable installation:UserWarning" $(PY) -m pip install -q --no-deps --no-build-isolation --no-index -e .
	touch $@

# torch-scatter (the optional scatter backend) has no wheels on PyPI: build it once from
# source against the venv's torch and keep the wheel outside the clone. Its setup.py turns ninja off, so the
# parallelism is setuptools' own (one job per extension module, `build_ext --parallel`), asked for through
# DIST_EXTRA_CONFIG with every core.
TORCH_SCATTER ?= torch-scatter==2.1.2
WHEELS := $(ESPER_CACHE)/wheels
BUILD_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
$(DEPS_VENV)/.scatter: $(DEPS_VENV)/.installed
	@$(DEPS_VENV)/bin/pip install -q --no-index --find-links $(WHEELS) "$(TORCH_SCATTER)" 2>/dev/null || { \
	  echo "building $(TORCH_SCATTER) from source with $(BUILD_JOBS) jobs (once; cached in $(WHEELS))"; \
	  mkdir -p $(WHEELS) && printf "[build_ext]\nparallel = %s\n" $(BUILD_JOBS) > $(ESPER_CACHE)/build_ext.cfg && \
	  DIST_EXTRA_CONFIG=$(ESPER_CACHE)/build_ext.cfg \
	  $(DEPS_VENV)/bin/pip wheel -q --no-build-isolation --no-deps -w $(WHEELS) "$(TORCH_SCATTER)" && \
	  $(DEPS_VENV)/bin/pip install -q --no-index --find-links $(WHEELS) "$(TORCH_SCATTER)"; }
	touch $@

# No prerequisite: the folder's name is the lock's hash, so a changed lock is another folder. (A prerequisite on the
# file would reinstall into the shared venv from every fresh clone, whose lock is always newer than the stamp.)
$(DEPS_VENV)/.installed:
	@echo "setting up $(DEPS_VENV) (first time: torch is a large download)"
	$(PYTHON) -m venv $(DEPS_VENV)
	$(DEPS_VENV)/bin/pip install -q --upgrade pip
	$(DEPS_VENV)/bin/pip install -q -r requirements.lock
	touch $@

up: venv ## install everything, start the broker (BROKERS=3: a local 3-node cluster), create the topics, start the services
	$(ESPER) up $(if $(BROKERS),--brokers $(BROKERS))

down: venv ## stop the services and the local broker (data is kept)
	$(ESPER) down

demo: venv ## on a running system (make up): adaptive run vs --no-adapt baseline, SQL comparison, HTML report
	$(ESPER) demo

status: venv ## broker and services: up or down
	$(ESPER) status

broker: venv ## start only the local Kafka (BROKERS=3: a local 3-node cluster)
	$(ESPER) broker start $(if $(BROKERS),--brokers $(BROKERS))

broker-stop: venv ## stop the local Kafka (every node)
	$(ESPER) broker stop

schemas: venv ## regenerate schemas/*.avsc (+ history and fixture logs) from contracts/
	$(ESPER) schemas generate
	$(PY) -m tests.fixtures.write_fixture_logs

schemas-check: venv ## fail if schemas/ drifted from contracts/ or history breaks FULL_TRANSITIVE
	$(ESPER) schemas check

lint: venv ## ruff (lint + import order) and mypy (strict for contracts/ and services/oona/), as pyproject.toml sets them
	@status=0; $(PY) -m ruff check . || status=1; $(PY) -m mypy || status=1; exit $$status

# The 3-node cluster's cases (each module on a 3-node system of its own), also part of `make test`.
CLUSTER_CASES = tests/e2e/test_cluster_faults.py tests/e2e/test_scale_out.py

test: lint ## make lint, then the whole suite, including integration tests on a real broker (started if needed)
	$(PY) -m pytest $(PYTEST_ARGS)

test-cluster: venv ## only the cases on a local 3-node cluster (kill -9 of the leaders' broker, a rolling restart, scale-out)
	$(PY) -m pytest $(CLUSTER_CASES) $(PYTEST_ARGS)

test-unit: venv ## unit tests only (no broker)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: venv ## integration tests only (a real broker, started if needed)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

LEARN_CONFIG ?= examples/spirals-learn.yaml
LEARN_ARGS ?=
learn: venv ## on a running system (make up): the learning loop on LEARN_CONFIG (collect, train, evaluate vs baselines, report)
	$(ESPER) learn $(LEARN_CONFIG) $(LEARN_ARGS)

bench: venv ## benchmarks: side-by-side ratios, JSON in bench-results/
	$(ESPER) bench

FUZZ_CASES ?= 1000000
FUZZ_SEED ?= 11
fuzz: venv ## differential fuzzing of the Avro decoders against fastavro (FUZZ_CASES per decoder, FUZZ_SEED)
	$(PY) -m tests.fuzz.avro_differential --cases $(FUZZ_CASES) --seed $(FUZZ_SEED)

clean: ## remove caches inside the checkout (not the data)
	rm -rf .cache .pytest_cache .mypy_cache .ruff_cache bench-results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-state: down ## stop and delete all local data (broker log, DuckDB files)
	rm -rf .state
