# model-trainer: `make demo` trains a real job through a real Kafka; `make test` runs the suite.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
UV_VERSION := 0.13.8
CACHE ?= $(HOME)/.cache/model-trainer
export UV_CACHE_DIR ?= $(HOME)/.cache/uv
export MODEL_TRAINER_CACHE := $(CACHE)
UV := $(or $(shell command -v uv 2>/dev/null),$(CACHE)/tools/bin/uv)
VENV := .venv

.PHONY: install demo test test-fast test-deep lint typecheck check kafka-fetch kafka-start kafka-stop schema clean

$(CACHE)/tools/bin/uv:
	$(PYTHON) -m venv $(CACHE)/tools
	$(CACHE)/tools/bin/pip install --quiet uv==$(UV_VERSION)

# The three distributions (service, client, contracts) into .venv, exactly as uv.lock pins them.
# Wheels (torch included) come from uv's cache after the first run. Compiled to bytecode once
# here: where PYTHONDONTWRITEBYTECODE is set (as on the team's machine) every process would
# otherwise compile torch and transformers from source again (14 s of CPU per import).
$(VENV)/.installed: pyproject.toml uv.lock contracts/pyproject.toml client/pyproject.toml | $(UV)
	$(UV) sync --frozen --python $(PYTHON) --compile-bytecode
	touch $@

install: $(VENV)/.installed

kafka-fetch:
	$(PYTHON) deploy/local_kafka.py fetch

# STORAGE=s3: corpus, checkpoints and artifact in a local S3 server's bucket (SeaweedFS).
STORAGE ?= local
demo: install kafka-fetch
	STORAGE=$(STORAGE) deploy/demo.sh

# Branch coverage of the service and the contracts, subprocesses and workers included.
# The integration tests mostly wait (on brokers, rebalances, timeouts), so files run in
# TEST_WORKERS processes at once, each with its own broker (pytest-xdist; 0 runs in one).
COVERAGE_FLOOR ?= 90
TEST_WORKERS ?= 3
# The job book and its pure helpers are held to every branch (the same run's data).
BOOK_FILES := service/model_trainer/book/book.py,service/model_trainer/book/effects.py,$\
	service/model_trainer/book/offsets.py,service/model_trainer/book/fairshare.py,$\
	service/model_trainer/book/jobs.py,service/model_trainer/book/records.py,$\
	service/model_trainer/book/lifecycle.py,service/model_trainer/shell/wire.py
# So are the contracts, every module (the in-process layer alone covers every branch).
CONTRACT_FILES := contracts/model_trainer_contracts/*
# And core/, every module (the in-process and S3 layers alone cover every branch).
CORE_FILES := service/model_trainer/core/*
# --real-kafka: the shell's world tests (tests/world) run against the real broker as well.
# The gate leaves the deep tests (tests/deep.py: long stories on real processes, each told
# by cheaper tests here too) to `make test-deep`, and its property machines draw a tenth of
# their examples (`make test-deep` draws them all).
GATE_EXAMPLES_DIVISOR ?= 10
test: install kafka-fetch
	TEST_EXAMPLES_DIVISOR=$(GATE_EXAMPLES_DIVISOR) $(VENV)/bin/pytest -n $(TEST_WORKERS) \
		--dist loadfile -m "not deep" --cov --cov-report=term --real-kafka \
		--cov-fail-under=$(COVERAGE_FLOOR)
	$(VENV)/bin/coverage report --include="$(BOOK_FILES),$(CONTRACT_FILES),$(CORE_FILES)" \
		--show-missing --fail-under=100

# What the gate leaves out: the deep tests, then the property machines at full strength.
# No coverage (the gate measures it); about 25 minutes on 2 cores.
test-deep: install kafka-fetch
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile -m deep --no-cov -p no:cacheprovider
	$(VENV)/bin/pytest -p no:cacheprovider --no-cov tests/runtime/test_book_machine.py \
		tests/runtime/test_book_world.py tests/contracts/test_contract_properties.py

# The layers that start no server (no broker, no S3 server, no `model-trainer serve`) and no
# long training: the book, the two-book world, contracts, core, the client, the CLI and the
# engine's quick tests; the property tests draw a tenth of their examples. No coverage.
# Two xdist processes: each imports torch (about 15 s of CPU with the venv's bytecode), and
# the tests split between them (at load 1.6: 40 s of wall time, where one process took 54 s).
FAST_MARKERS := not kafka and not s3 and not slow
test-fast: install
	TEST_EXAMPLES_DIVISOR=10 $(VENV)/bin/pytest -n 2 -p no:cacheprovider --no-cov -q \
		-m "$(FAST_MARKERS)"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

check: lint typecheck test

schema: install
	$(VENV)/bin/model-trainer schema --out docs

clean:
	rm -rf .demo .pytest_cache .mypy_cache .ruff_cache
