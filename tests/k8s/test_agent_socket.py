"""In agent mode the operator's agents serve the node socket, and the seed the operator injected decides
which vLLM instances they accept: the right NONE_HASH fingerprint is welcome, a wrong one is refused."""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.k8s import caches
from tests.k8s.operator_proc import OperatorProcess
from tieredkv_agent.api.client import AgentClient, AgentRejected
from tieredkv_agent.api.protocol import CompatProfile, none_hash_fingerprint
from tieredkv_agent.store.hashing import HashAlgo, none_hash
from tieredkv_devcluster import testing

pytestmark = pytest.mark.k8s

BLOCK = 64 * 1024
AGENT_MODE = {
    "version": "0.33",
    "mode": "agent",
    "cpuBytes": "1Gi",
    "selector": {"matchLabels": {"app": "vllm"}},
}


def _connect(sock: Path, fingerprint: str) -> AgentClient:
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.NamedTemporaryFile(dir=shm, prefix="tkv-test-region-") as region:
        region.truncate(4 * BLOCK)
        profile = CompatProfile(
            namespace="test-model_0123456789ab",
            block_bytes=BLOCK,
            hash_algo="sha256",
            none_hash_fingerprint=fingerprint,
        )
        return AgentClient(
            str(sock),
            instance_id="k8s-test",
            vllm_version="0.33.0",
            profile=profile,
            region_fd=region.fileno(),
            region_bytes=4 * BLOCK,
            timeout_s=10,
        )


def test_agents_serve_the_node_socket_and_accept_only_the_caches_seed(
    kube: testing.TestCluster, api: client.ApiClient, ns: str, operator: OperatorProcess
) -> None:
    assert kube.layout is not None, "reads the simulated nodes' hostPath directories"
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        caches.GROUP, caches.VERSION, ns, caches.PLURAL, caches.manifest("c", vllm=AGENT_MODE)
    )
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    seed = base64.b64decode(client.CoreV1Api(api).read_namespaced_secret("tieredkv-c-seed", ns).data["seed"])
    right = none_hash_fingerprint(none_hash(HashAlgo.SHA256, seed.decode()))
    for node in ("tkv-node-1", "tkv-node-2"):
        sock = kube.layout.nodes / node / "hostpath" / "var" / "run" / "tieredkv" / f"{ns}.c" / "agent.sock"
        testing.wait_for(sock.is_socket, 30, f"the agent socket on {node}")
        short = Path(tempfile.mkdtemp(prefix="tkv-")) / "s"  # AF_UNIX paths are limited to 107 bytes
        short.symlink_to(sock.parent)
        sock = short / "agent.sock"
        with _connect(sock, right) as agent:
            assert agent.connected and agent.hello_ok is not None
            assert agent.hello_ok.region_slots == 4
        with pytest.raises(AgentRejected) as err:
            _connect(sock, "0" * 16)
        assert right in str(err.value) and "0" * 16 in str(err.value)
    # Each agent records the refused Hello in the cache's status; the operator turns it into SeedConsistent.
    caches.wait_condition(api, ns, "c", "SeedConsistent", "False", timeout=60)

    def both_reported() -> dict[str, Any] | None:
        # The condition flips on the first node's report; the other node's may land a moment later.
        body: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
            caches.GROUP, caches.VERSION, ns, caches.PLURAL, "c"
        )
        return body if len(body["status"].get("profileMismatches") or {}) >= 2 else None

    cache = testing.wait_for(both_reported, 60, "both nodes' refused-Hello reports in the status")
    reports = cache["status"]["profileMismatches"]
    assert set(reports) == {"tkv-node-1", "tkv-node-2"}
    assert all(
        r["offeredFingerprint"] == "0" * 16 and r["expectedFingerprint"] == right for r in reports.values()
    )
    seed_condition = next(c for c in cache["status"]["conditions"] if c["type"] == "SeedConsistent")
    assert seed_condition["reason"] == "ProfileMismatch" and right in seed_condition["message"]
    assert cache["status"]["phase"] == "Degraded"
