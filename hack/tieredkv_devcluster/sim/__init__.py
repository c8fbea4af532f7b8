"""The node simulator: simulated kubelets for N nodes, pod status, local runs of opted-in pods, volumes."""

RUN_ANNOTATION = "sim.tieredkv.io/run"
"""Pods annotated `sim.tieredkv.io/run: local` get their containers run as real local processes."""

PROVISIONER = "sim.tieredkv.io/local"
STORAGE_CLASS = "tieredkv-local"
GLUSTER_STORAGE_CLASS = "tieredkv-gluster"
"""Backed by the cluster's GlusterFS volume, one FUSE client per node (sim.storage); default when present."""
GLUSTER_ENDPOINTS = "tieredkv-gluster"
"""The `endpoints` a gluster PV names (a real cluster needs that Endpoints object; the simulator does not)."""
NODE_PREFIX = "tkv-node-"
