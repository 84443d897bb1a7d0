# One entry point. `make` = lint + typecheck + test. Every target depends on the generated stubs.
.DEFAULT_GOAL := all
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROTOS := $(wildcard protos/nyxflow/v1/*.proto)
GEN := libs/nyxflow/v1
STAMP := $(GEN)/.stamp

.PHONY: all install proto browser run test test-unit test-integration test-e2e faults lint typecheck fmt bench migrate clean

all: lint typecheck test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

$(STAMP): $(PROTOS) $(VENV)/.installed
	mkdir -p $(GEN)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m grpc_tools.protoc -Iprotos \
		--python_out=libs --grpc_python_out=libs \
		--mypy_out=libs --mypy_grpc_out=libs $(PROTOS)
	touch $(GEN)/__init__.py $(GEN)/py.typed $@

proto: $(STAMP)

migrate: proto
	$(BIN)/python -m nyxflow_runs migrate

run: proto
	$(BIN)/nyxflow up

# The page tests drive Debian's Chromium (never a downloaded browser).
browser:
	@command -v chromium >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
		|| { echo "the page tests need Debian's chromium: apt-get install chromium"; exit 1; }

test: proto browser
	$(BIN)/pytest

test-unit: proto
	$(BIN)/pytest tests/unit

test-integration: proto
	$(BIN)/pytest tests/integration

test-e2e: proto
	$(BIN)/pytest tests/e2e

faults: proto
	$(BIN)/pytest tests/faults

lint: proto
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: proto
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: proto
	$(BIN)/mypy

bench: proto
	CI=1 $(BIN)/python -m tests.bench

clean:
	rm -rf $(GEN) $(VENV) .pytest_cache .mypy_cache .ruff_cache
