# `make study` runs the whole study on the embedded defaults; `make test` runs every test;
# `make test-fast` everything but the slow tests (real CLI, subprocesses, servers, faults): the edit loop.
# Both create the virtual environment first if it is missing, and run TEST_WORKERS pytest-xdist workers:
# many tests wait on servers and subprocesses, so two share 2 cores well (tests/conftest.py splits torch's threads).
SHELL := bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch from the machine's wheel cache on developer machines and CI; the Docker image keeps its own.
TORCH := torch==2.14.1 torchvision==0.29.1
TEST_WORKERS ?= 2
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW := ignore
export PREFECT_LOGGING_EXTRA_LOGGERS := ratio_cnn

.PHONY: install study test test-fast bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "installing into $(VENV) (torch is large: a few minutes the first time)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH) 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	$(BIN)/python -m pip install -q -e '.[flows,test]' 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	touch $@

study: install
	$(BIN)/python -m flows.study

test: install
	$(BIN)/python -m pytest -ra --durations=25 -n $(TEST_WORKERS) --dist loadgroup

test-fast: install
	$(BIN)/python -m pytest -ra -m 'not slow' -n $(TEST_WORKERS) --dist loadgroup

# ratio-cnn against the naive baseline (about 25 min on 2 cores): bench/results/latest.json, docs/benchmarks.md.
bench: install
	$(BIN)/python -m bench.run

lint: install
	$(BIN)/hadolint --no-color Dockerfile

clean:
	rm -rf $(VENV) .pytest_cache
