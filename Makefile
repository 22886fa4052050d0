# `make demo` and `make test` work on a fresh machine: they create .venv and install everything first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup packages demo test lint typecheck unit protos docs lowest image bench faults cluster fuzz mutate

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/cos demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/import_graph.py

typecheck: setup
	$(BIN)/mypy src examples/chiefofstate_examples

unit: setup
	$(BIN)/pytest tests/unit -q

# The Debian packages some suites need (faketime), installed only when missing.
packages:
	bash .ci/packages

test: packages lint typecheck
	PYTEST=$(BIN)/pytest bash scripts/run_tests.sh
	$(BIN)/python scripts/mutate.py --short

# The whole curated mutation run (docs/testing.md, "Mutation run"); CI runs its --short form.
mutate: setup
	$(BIN)/python scripts/mutate.py $(MUTATE_ARGS)

protos: setup
	$(BIN)/python scripts/gen_protos.py

# docs/configuration.md, generated from the settings code (a test fails when it is stale).
docs: setup
	$(BIN)/python scripts/gen_config_docs.py

# The unit tests on the lowest dependency versions pyproject.toml declares (its own venv, .venv-lowest).
lowest:
	bash .ci/lowest_versions.sh

# Build deploy/Dockerfile on a Debian-package base with buildah and run a node from it (root; a few
# minutes; not part of CI). docs/deploy.md, "Building the image here".
image:
	bash deploy/image_check.sh

# The benchmark of docs/performance.md (about 10 minutes); `make bench BENCH_ARGS=--quick` for a smoke run.
bench: setup
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# Long runs of the fault suite (docs/testing.md), e.g. `make faults FAULTS_ARGS="--runs 20 --seed 100"`.
faults: setup
	$(BIN)/python -m tests.faults $(FAULTS_ARGS)

# Long runs of the cluster scenario (docs/testing.md), e.g. `make cluster CLUSTER_ARGS="--runs 10 --default-timing"`.
cluster: setup
	$(BIN)/python -m tests.cluster $(CLUSTER_ARGS)

# Long fuzz runs (docs/testing.md), e.g. `make fuzz FUZZ_ARGS="--cases 50000"`.
fuzz: setup
	$(BIN)/python -m tests.fuzz $(FUZZ_ARGS)
