"""The Helm chart in the real control plane: a server-side dry run, then `helm install --wait` with the
operator running as a real process through the node simulator; a TieredKVCache becomes Ready, the chart's
webhooks inject and validate, a real Prometheus scrapes the operator and an agent and every dashboard query
returns data; an upgrade rolls the operator only when a value changed; uninstall keeps the CRD.

The tests share one release and run in file order (the last one uninstalls it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.k8s import caches
from tests.k8s.helm_release import CHART, Release
from tieredkv_agent.api.client import AgentClient
from tieredkv_agent.api.protocol import CompatProfile, none_hash_fingerprint
from tieredkv_agent.store.hashing import HashAlgo, none_hash
from tieredkv_devcluster import testing
from tieredkv_devcluster.prometheus import Prometheus

pytestmark = pytest.mark.k8s

AGENT_MODE = {
    "version": "0.33",
    "mode": "agent",
    "cpuBytes": "1Gi",
    "selector": {"matchLabels": {"app": "vllm"}},
}
BLOCK = 64 * 1024
DASHBOARD = CHART / "dashboards" / "tieredkv.json"
ARTIFACTS = Path(
    os.environ.get("TIEREDKV_TEST_ARTIFACTS", Path(tempfile.gettempdir()) / "tieredkv-test-dumps")
)


@pytest.fixture(scope="module")
def api(kube: testing.TestCluster) -> Iterator[client.ApiClient]:
    with config.new_client_from_config(config_file=str(kube.kubeconfig)) as api_client:
        yield api_client


def _namespace(core: client.CoreV1Api, name: str, labels: dict[str, str]) -> None:
    core.create_namespace({"metadata": {"name": name, "labels": {"tieredkv.io/test": "true", **labels}}})
    testing.wait_for(lambda: core.read_namespaced_service_account("default", name).secrets, 30, "a token")


@pytest.fixture(scope="module")
def release(
    request: pytest.FixtureRequest, kube: testing.TestCluster, api: client.ApiClient
) -> Iterator[Release]:
    """Installed after a server-side dry run; uninstalled (if a test did not) and cleaned up afterwards."""
    if kube.layout is None:
        pytest.skip("the operator runs through the node simulator: needs the local control plane")
    core, suffix = client.CoreV1Api(api), uuid.uuid4().hex[:6]
    rel = Release(kube, namespace=f"helm-release-{suffix}", caches=f"helm-caches-{suffix}")
    _namespace(core, rel.namespace, {})
    _namespace(core, rel.caches, {"tieredkv.io/helm-test": rel.caches})
    dry = rel.install(dry_run=True)
    assert "STATUS: pending-install" in dry.stdout and "kind: Deployment" in dry.stdout
    rel.install()
    yield rel
    if any(getattr(item, "report_call", None) and item.report_call.failed for item in request.session.items):
        print(f"\n[tieredkv] operator log (tail):\n{rel.operator_log()}")
        for ns in (rel.namespace, rel.caches):
            testing.dump_namespace(kube, ns, ARTIFACTS / ns)
    rel.helm("uninstall", rel.name, "--wait", check=False)
    for ns in (rel.caches, rel.namespace):
        core.delete_namespace(ns)


@pytest.fixture(scope="module")
def cache(release: Release, api: client.ApiClient) -> dict[str, Any]:
    """An agent-mode cache in the release's cache namespace, Ready."""
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        caches.GROUP, caches.VERSION, release.caches, caches.PLURAL, caches.manifest("c", vllm=AGENT_MODE)
    )
    return caches.wait_condition(api, release.caches, "c", "Ready", "True", timeout=120)


def test_the_installed_operator_runs_under_the_charts_service_account_and_makes_a_cache_ready(
    release: Release, cache: dict[str, Any], api: client.ApiClient
) -> None:
    [pod] = release.operator_pods()
    assert pod["spec"]["serviceAccountName"] == release.fullname
    assert pod["status"]["phase"] == "Running"
    assert cache["status"]["agents"]["ready"] == cache["status"]["agents"]["desired"] == 2
    seed = client.CoreV1Api(api).read_namespaced_secret("tieredkv-c-seed", release.caches)
    assert seed.data["seed"], "the operator created the seed under the chart's namespaced Secret grant"


def test_the_charts_webhooks_inject_pods_and_refuse_invalid_caches(
    release: Release, cache: dict[str, Any], api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    pod = {
        "metadata": {
            "name": "vllm-0",
            "labels": {"app": "vllm", "tieredkv.io/inject": "true"},
            "annotations": {"tieredkv.io/cache": "c"},
        },
        "spec": {
            "containers": [{"name": "vllm", "image": "vllm/vllm-openai", "command": ["vllm", "serve", "m"]}]
        },
    }
    created = core.create_namespaced_pod(release.caches, pod)
    assert created.metadata.annotations.get("tieredkv.io/injected") == "c", created.metadata.annotations
    core.delete_namespaced_pod("vllm-0", release.caches, grace_period_seconds=0)
    bad = caches.manifest("bad", capacity={"highWatermark": 0.5, "lowWatermark": 0.6})
    with pytest.raises(ApiException) as err:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            caches.GROUP, caches.VERSION, release.caches, caches.PLURAL, bad
        )
    assert err.value.status == 422 and "lowWatermark" in str(err.value.body)


def _store_and_load(kube: testing.TestCluster, ns: str, api: client.ApiClient) -> None:
    """One store, one lookup and one load through an agent's node socket, so that block series exist."""
    assert kube.layout is not None
    seed = base64.b64decode(client.CoreV1Api(api).read_namespaced_secret("tieredkv-c-seed", ns).data["seed"])
    fingerprint = none_hash_fingerprint(none_hash(HashAlgo.SHA256, seed.decode()))
    sock = (
        kube.layout.nodes / "tkv-node-1" / "hostpath" / "var" / "run" / "tieredkv" / f"{ns}.c" / "agent.sock"
    )
    testing.wait_for(sock.is_socket, 30, "the agent socket")
    short = Path(tempfile.mkdtemp(prefix="tkv-")) / "s"  # AF_UNIX paths are limited to 107 bytes
    short.symlink_to(sock.parent)
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    keys = [hashlib.sha256(f"helm-{i}".encode()).digest() + bytes(4) for i in range(2)]
    namespace = "test-model_0123456789ab"
    with tempfile.NamedTemporaryFile(dir=shm, prefix="tkv-test-region-") as region:
        region.truncate(4 * BLOCK)
        profile = CompatProfile(
            namespace=namespace, block_bytes=BLOCK, hash_algo="sha256", none_hash_fingerprint=fingerprint
        )
        with AgentClient(
            str(short / "agent.sock"),
            instance_id="helm-test",
            vllm_version="0.33.0",
            profile=profile,
            region_fd=region.fileno(),
            region_bytes=4 * BLOCK,
            timeout_s=10,
        ) as agent:
            agent.submit_store(1, namespace, keys, [0, 1])
            assert agent.drain(10)
            agent.lookup(namespace, keys)
            agent.submit_load(2, namespace, keys, [2, 3])
            assert agent.drain(10)


def _dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    window = "30s"  # what $__rate_interval comes to with a 1 s scrape interval, with room
    return [
        (
            p["title"],
            t["expr"].replace("$__rate_interval", window).replace("$namespace", ".*").replace("$cache", ".*"),
        )
        for p in panels
        for t in p.get("targets", [])
    ]


def test_a_real_prometheus_scrapes_the_operator_and_an_agent_and_every_dashboard_query_returns_data(
    release: Release, cache: dict[str, Any], api: client.ApiClient, kube: testing.TestCluster
) -> None:
    _store_and_load(kube, release.caches, api)
    [operator] = release.operator_pods()
    agents = (
        client.CoreV1Api(api).list_namespaced_pod(release.caches, label_selector="tieredkv.io/cache=c").items
    )
    agent_ips = [
        p.status.pod_ip for p in agents if p.metadata.labels.get("app.kubernetes.io/component") == "agent"
    ]
    assert len(agent_ips) == 2
    labels = {"namespace": release.caches, "cache": "c"}  # what the chart's agent ServiceMonitor adds
    prometheus = Prometheus(
        [
            {
                "job_name": "tieredkv-operator",
                "honor_labels": True,
                "static_configs": [{"targets": [f"{operator['status']['podIP']}:9401"]}],
            },
            {
                "job_name": "tieredkv-agents",
                "static_configs": [{"targets": [f"{ip}:9400" for ip in agent_ips], "labels": labels}],
            },
        ]
    )
    try:
        prometheus.wait_for_scrapes(targets=3)
        testing.wait_for(
            lambda: prometheus.query("max(tieredkv_gc_last_pass_timestamp_seconds) > 0"), 60, "a GC pass"
        )
        empty = [title for title, expr in _dashboard_queries() if not prometheus.query(expr)]
        assert not empty, f"dashboard queries without data: {empty}"
        phases = {r["metric"]["phase"]: float(r["value"][1]) for r in prometheus.query("tieredkv_caches")}
        assert phases["Ready"] >= 1
    except BaseException:
        print(f"\n[tieredkv] Prometheus log (tail):\n{prometheus.tail()}")
        raise
    finally:
        prometheus.stop()


def test_an_upgrade_rolls_the_operator_only_when_a_value_changed(
    release: Release, cache: dict[str, Any], api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    secret = f"{release.fullname}-webhook-tls"
    cert = core.read_namespaced_secret(secret, release.namespace).data["tls.crt"]
    [before] = release.operator_pods()
    release.upgrade()
    [same] = release.operator_pods()
    assert same["metadata"]["name"] == before["metadata"]["name"], (
        "an upgrade without changes rolled the operator"
    )
    assert core.read_namespaced_secret(secret, release.namespace).data["tls.crt"] == cert, (
        "the cert was regenerated"
    )
    release.upgrade("operator.driftIntervalSeconds=3")
    [after] = testing.wait_for(
        lambda: (p := release.operator_pods()) and len(p) == 1 and p, 60, "one operator pod"
    )
    assert after["metadata"]["name"] != before["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in after["spec"]["containers"][0]["env"]}
    assert env["TIEREDKV_OPERATOR_DRIFT_INTERVAL_SECONDS"] == "3"
    caches.wait_condition(api, release.caches, "c", "Ready", "True", timeout=60)


def test_uninstall_removes_the_operator_and_its_webhooks_but_keeps_the_crd_and_the_caches(
    release: Release, cache: dict[str, Any], api: client.ApiClient
) -> None:
    release.helm("uninstall", release.name, "--wait")
    testing.wait_for(lambda: not release.operator_pods(), 60, "the operator pod to go (garbage collection)")
    admission = client.AdmissionregistrationV1Api(api)
    with pytest.raises(ApiException) as gone:
        admission.read_mutating_webhook_configuration(release.fullname)
    assert gone.value.status == 404
    with pytest.raises(ApiException):
        client.RbacAuthorizationV1Api(api).read_cluster_role(f"{release.fullname}-caches")
    crd = client.ApiextensionsV1Api(api).read_custom_resource_definition("tieredkvcaches.tieredkv.io")
    assert crd.metadata.annotations.get("helm.sh/resource-policy") == "keep"
    assert caches.get(api, release.caches, "c")["metadata"]["name"] == "c"
