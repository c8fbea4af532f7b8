"""Simulated nodes: registered Ready, with capacity, and without the not-ready taint.

The TaintNodesByCondition admission plugin taints every new Node `node.kubernetes.io/not-ready`; only
the node-lifecycle controller removes it, and that controller is off (it would mark nodes without a
kubelet heartbeat NotReady). So the simulator removes the taint itself, once, after registering.
"""

from __future__ import annotations

from datetime import UTC, datetime

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tieredkv_devcluster.sim import NODE_PREFIX


def node_names(count: int) -> list[str]:
    return [f"{NODE_PREFIX}{i}" for i in range(1, count + 1)]


def ensure_nodes(core: client.CoreV1Api, count: int, *, kubelet_port: int) -> list[str]:
    """Register `count` Ready nodes; the API server reaches their kubelet API (logs) on `kubelet_port`."""
    names = node_names(count)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for name in names:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "sim.tieredkv.io/node": "true",
                },
            },
        }
        try:
            core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        resources = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        conditions = [
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "simulated",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
        ]
        conditions += [
            {
                "type": t,
                "status": "False",
                "reason": "Simulated",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
            for t in ("MemoryPressure", "DiskPressure", "PIDPressure")
        ]
        status = {
            "capacity": resources,
            "allocatable": resources,
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
            "nodeInfo": {
                "kubeletVersion": "v1.20.2-sim",
                "kubeProxyVersion": "v1.20.2-sim",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "sim://local",
                "osImage": "tieredkv node simulator",
                "kernelVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }
        core.patch_node_status(name, {"status": status})
        core.patch_node(name, {"spec": {"taints": None}})
    return names
