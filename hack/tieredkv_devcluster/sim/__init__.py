"""The node simulator: simulated kubelets for N nodes, pod status, local runs of opted-in pods, volumes."""

RUN_ANNOTATION = "sim.tieredkv.io/run"
"""Pods annotated `sim.tieredkv.io/run: local` get their containers run as real local processes."""

PROVISIONER = "sim.tieredkv.io/local"
STORAGE_CLASS = "tieredkv-local"
NODE_PREFIX = "tkv-node-"
