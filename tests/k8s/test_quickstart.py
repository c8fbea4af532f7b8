"""The quickstart, shorter: the chart installed, engine A stores through its node's agent, engine B (another
pod, maybe on the other node) loads the shared prefix from A's blocks; numbers checked against the agents'
metrics and the files on the volume checked byte for byte against blocks recomputed from the seed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.k8s import caches
from tests.k8s.helm_release import Release
from tieredkv_devcluster import scenario, testing

pytestmark = pytest.mark.k8s

PROMPTS = {"engine-a": ["1:256", "2:128"], "engine-b": ["1:256", "3:128"]}
BLOCK_BYTES = 65536


@pytest.fixture
def release(kube: testing.TestCluster, api: client.ApiClient) -> Iterator[Release]:
    if kube.layout is None:
        pytest.skip("the engines run through the node simulator: needs the local control plane")
    core, suffix = client.CoreV1Api(api), uuid.uuid4().hex[:6]
    rel = Release(kube, namespace=f"qs-release-{suffix}", caches=f"qs-{suffix}", name="tkv-qs")
    core.create_namespace({"metadata": {"name": rel.namespace, "labels": {"tieredkv.io/test": "true"}}})
    labels = {"tieredkv.io/test": "true", "tieredkv.io/helm-test": rel.caches}
    core.create_namespace({"metadata": {"name": rel.caches, "labels": labels}})
    testing.wait_for(
        lambda: core.read_namespaced_service_account("default", rel.caches).secrets, 30, "a token"
    )
    rel.install()
    yield rel
    rel.helm("uninstall", rel.name, "--wait", check=False)
    for ns in (rel.caches, rel.namespace):
        core.delete_namespace(ns)


def test_engine_b_loads_the_shared_prefix_from_engine_as_blocks_and_the_metrics_agree(
    kube: testing.TestCluster, api: client.ApiClient, release: Release
) -> None:
    ns = release.caches
    docs = [d for d in scenario.manifests(ns, PROMPTS) if d["kind"] != "Namespace"]
    scenario.apply(kube, docs)
    caches.wait_condition(api, ns, "shared", "Ready", "True", timeout=120)
    first = scenario.wait_summary(kube, ns, "engine-a", timeout=120)
    assert (first["blocks"], first["computed"], first["stored"], first["failed_stores"]) == (24, 24, 24, 0)
    scenario.scale(kube, ns, "engine-b", 1)
    second = scenario.wait_summary(kube, ns, "engine-b", timeout=120)
    assert (second["loaded"], second["computed"], second["failed_loads"], second["mismatched"]) == (
        16,
        8,
        0,
        0,
    )

    metrics = scenario.scrape(scenario.agent_targets(kube, ns, "shared"))
    assert metrics['tieredkv_blocks_total{op="store",result="done"}'] == 32  # A's 24 and B's own 8
    assert metrics['tieredkv_blocks_total{op="load",result="done"}'] == 16
    assert metrics['tieredkv_block_bytes_total{op="load",result="done"}'] == 16 * BLOCK_BYTES

    claim = caches.get(api, ns, "shared")["status"]["pvcName"]
    volume = scenario.volume_files(kube, ns, claim)
    assert volume is not None and len(volume.blocks) == 32
    for relpath, data in scenario.expected_blocks(scenario.seed(kube, ns, "shared"), 1, 256, BLOCK_BYTES):
        assert (volume.root / relpath).read_bytes() == data
