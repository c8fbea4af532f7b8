"""agent.socketVolume: csi end to end on the local control plane: the chart's CSIDriver and node plugin
(`tieredkv-agent csi`, run by the simulated kubelets, which register it through plugins_registry), a cache
in agent mode, and an injected pod whose socket directory is an inline csi volume. The pod's own process
connects to the agent through it and gets its Hello accepted; deleting the pod unpublishes the volume."""

from __future__ import annotations

import copy
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.k8s import caches
from tests.k8s.operator_proc import SIM_ANNOTATIONS, OperatorProcess
from tests.unit.chart_helpers import render
from tieredkv_devcluster import testing
from tieredkv_operator import names

pytestmark = pytest.mark.k8s

REPO = Path(__file__).resolve().parents[2]
CODE_PATH = f"{REPO / 'agent'}:{REPO / 'common'}"
"""The checkout's agent code for the test pod's client (its own PYTHONPATH replaces the simulator's)."""
AGENT_CSI = {
    "version": "0.33",
    "mode": "agent",
    "cpuBytes": "1Gi",
    "selector": {"matchLabels": {"app": "vllm"}},
}

CLIENT = textwrap.dedent(
    """
    import os, sys, tempfile
    from tieredkv_agent.api.client import AgentClient
    from tieredkv_agent.api.protocol import CompatProfile, none_hash_fingerprint
    from tieredkv_agent.store.hashing import HashAlgo, none_hash

    sock = sys.argv[1]
    fingerprint = none_hash_fingerprint(none_hash(HashAlgo.SHA256, os.environ["PYTHONHASHSEED"]))
    block = 64 * 1024
    with tempfile.NamedTemporaryFile(dir="/dev/shm", prefix="tkv-csi-region-") as region:
        region.truncate(4 * block)
        profile = CompatProfile(namespace="csi-test_0123456789ab", block_bytes=block, hash_algo="sha256",
                                none_hash_fingerprint=fingerprint)
        with AgentClient(sock, instance_id="csi-pod", vllm_version="0.33.0", profile=profile,
                         region_fd=region.fileno(), region_bytes=4 * block, timeout_s=10) as agent:
            assert agent.connected and agent.hello_ok is not None
            print("hello accepted, slots", agent.hello_ok.region_slots, flush=True)
    try:
        open(os.path.join(os.path.dirname(sock), "planted"), "w")
        print("WROTE INTO THE SOCKET DIRECTORY", flush=True)
    except OSError as exc:
        print("socket directory is read-only:", exc.strerror, flush=True)
    """
)


def _install_csi_driver(api: client.ApiClient, ns: str) -> None:
    """The chart's CSIDriver (cluster-wide, kept across tests) and node plugin DaemonSet (in `ns`)."""
    docs = render("sim-values.yaml")
    driver = next(d for d in docs if d["kind"] == "CSIDriver")
    daemon_set = copy.deepcopy(next(d for d in docs if d["kind"] == "DaemonSet"))
    try:
        client.StorageV1Api(api).create_csi_driver(driver)
    except ApiException as exc:
        if exc.status != 409:
            raise
    daemon_set["metadata"]["namespace"] = ns
    client.AppsV1Api(api).create_namespaced_daemon_set(ns, daemon_set)


def _pod(name: str, ns: str) -> dict[str, Any]:
    sock = f"/var/run/tieredkv/{ns}.c/agent.sock"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app": "vllm", "tieredkv.io/inject": "true"},
            "annotations": {**SIM_ANNOTATIONS, names.ANNOTATION_KV_TRANSFER_CONFIG: "env"},
        },
        "spec": {
            "restartPolicy": "Never",
            "nodeName": "tkv-node-1",
            "containers": [
                {
                    "name": "vllm",
                    "image": "stand-in",
                    "command": [sys.executable, "-c", CLIENT, sock],
                    "env": [{"name": "PYTHONPATH", "value": CODE_PATH}],
                }
            ],
        },
    }


def test_an_injected_pod_reaches_the_agent_through_its_csi_volume_and_loses_it_when_deleted(
    kube: testing.TestCluster, api: client.ApiClient, ns: str, webhook_operator: OperatorProcess
) -> None:
    assert kube.layout is not None, "reads the simulated nodes' directories"
    node_root = kube.layout.nodes / "tkv-node-1" / "hostpath"
    _install_csi_driver(api, ns)
    registration = node_root / "var/lib/kubelet/plugins_registry/socket.tieredkv.io-reg.sock"
    testing.wait_for(registration.is_socket, 60, "the node plugin's registration socket")
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        caches.GROUP,
        caches.VERSION,
        ns,
        caches.PLURAL,
        caches.manifest("c", vllm=AGENT_CSI, agent={"socketVolume": "csi"}),
    )
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    testing.wait_for((node_root / f"var/run/tieredkv/{ns}.c/agent.sock").is_socket, 60, "the agent socket")

    core = client.CoreV1Api(api)
    created = core.create_namespaced_pod(ns, _pod("p", ns))
    volumes = {v.name: v for v in created.spec.volumes}
    assert volumes["tieredkv-socket"].csi.driver == "socket.tieredkv.io"
    assert volumes["tieredkv-socket"].csi.volume_attributes == {"cache": "c"}
    assert all(v.host_path is None for v in created.spec.volumes)

    def finished() -> str | None:
        phase: str = core.read_namespaced_pod("p", ns).status.phase
        return phase if phase in ("Succeeded", "Failed") else None

    phase = testing.wait_for(finished, 120, "the pod's client to finish")
    log = core.read_namespaced_pod_log("p", ns, container="vllm")
    assert phase == "Succeeded", log
    assert "hello accepted, slots 4" in log
    assert "socket directory is read-only" in log, log
    target = (
        node_root / f"var/lib/kubelet/pods/{created.metadata.uid}/volumes/kubernetes.io~csi/tieredkv-socket"
    )
    assert (target / "mount" / "agent.sock").is_socket()

    core.delete_namespaced_pod("p", ns)
    testing.wait_for(lambda: not target.exists(), 60, "the unpublished volume directory to go")
