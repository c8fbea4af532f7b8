"""Fixtures of the k8s tier: one real control plane per session, one namespace per test.

KUBECONFIG is pinned here, before any test module imports `kubernetes` (whose default config path is
read at import time), so a user's own cluster is never touched without TIEREDKV_USE_EXISTING_CLUSTER=1.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.operator_proc import OperatorProcess
from tieredkv_devcluster import testing
from tieredkv_devcluster.controlplane import free_port
from tieredkv_devcluster.pki import issue_serving_cert

if not testing.use_existing():
    _PINNED = Path(tempfile.mkdtemp(prefix="tieredkv-kubeconfig-")) / "kubeconfig"
    os.environ["KUBECONFIG"] = str(_PINNED)

from kubernetes import client, config

ARTIFACTS = Path(
    os.environ.get("TIEREDKV_TEST_ARTIFACTS", Path(tempfile.gettempdir()) / "tieredkv-test-dumps")
)


@pytest.fixture(scope="session")
def kube() -> Iterator[testing.TestCluster]:
    with testing.session_cluster(nodes=2) as cluster:
        if not testing.use_existing():
            shutil.copyfile(cluster.kubeconfig, _PINNED)
        yield cluster


@pytest.fixture
def api(kube: testing.TestCluster) -> Iterator[client.ApiClient]:
    with config.new_client_from_config(config_file=str(kube.kubeconfig)) as api_client:
        yield api_client


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def ns(request: pytest.FixtureRequest, kube: testing.TestCluster, core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace for the test; on failure, its objects, events and process logs are dumped."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"tieredkv.io/test": "true"}}})
    # Pods are refused until the token controller gave the default ServiceAccount its token Secret.
    testing.wait_for(
        lambda: core.read_namespaced_service_account("default", name).secrets,
        30,
        "the default ServiceAccount's token",
    )
    yield name
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        where = testing.dump_namespace(kube, name, ARTIFACTS / name)
        print(f"\n[tieredkv] state of namespace {name} dumped to {where}")
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def tieredkv_crd(kube: testing.TestCluster) -> str:
    """The TieredKVCache CRD from crds/, applied once per session and Established."""
    crd = Path(__file__).resolve().parents[2] / "crds" / "tieredkv.io_tieredkvcaches.yaml"
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crd))
    return "tieredkvcaches.tieredkv.io"


@pytest.fixture
def operator(
    request: pytest.FixtureRequest, kube: testing.TestCluster, tieredkv_crd: str, ns: str
) -> Iterator[OperatorProcess]:
    """The real operator process, watching the test's namespace; its log is printed if the test fails."""
    proc = OperatorProcess(kube, ns, ARTIFACTS / ns)
    proc.start()
    yield proc
    proc.stop()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(f"\n[tieredkv] operator log (tail):\n{proc.tail()}")


def _webhook_refuses(api: client.ApiClient, ns: str) -> bool:
    """True once the API server sends caches to the webhook: a dry-run create of an invalid one is refused.

    A new webhook configuration reaches the API server's admission informer a moment after it exists.
    """
    probe = {
        "apiVersion": "tieredkv.io/v1alpha1",
        "kind": "TieredKVCache",
        "metadata": {"name": "webhook-probe"},
        "spec": {
            "storage": {"size": "1Gi"},
            "vllm": {"version": "0.33", "cpuBytes": "1Gi", "selector": {"matchLabels": {"app": "probe"}}},
            "capacity": {"highWatermark": 0.5, "lowWatermark": 0.6},
        },
    }
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            "tieredkv.io", "v1alpha1", ns, "tieredkvcaches", probe, dry_run="All"
        )
    except client.exceptions.ApiException as err:
        return err.status == 422
    return False


@pytest.fixture
def webhook_operator(
    request: pytest.FixtureRequest,
    kube: testing.TestCluster,
    tieredkv_crd: str,
    ns: str,
    api: client.ApiClient,
) -> Iterator[OperatorProcess]:
    """The real operator serving its webhooks on 127.0.0.1 with a certificate from the cluster CA."""
    if kube.layout is None:
        pytest.skip("the webhook test serves on loopback: needs the local control plane")
    cert, key = issue_serving_cert(kube.layout.pki, f"webhook-{ns}", ["127.0.0.1"])
    name = f"{ns}.test.tieredkv.io"  # webhook names are <handler id>.<this>: a domain of 3+ labels
    proc = OperatorProcess(
        kube,
        ns,
        ARTIFACTS / ns,
        webhook_enabled="true",
        webhook_listen_host="127.0.0.1",
        webhook_public_host="127.0.0.1",
        webhook_port=str(free_port()),
        webhook_cert_file=str(cert),
        webhook_key_file=str(key),
        webhook_ca_file=str(kube.layout.pki / "ca.crt"),
        webhook_configuration_name=name,
    )
    proc.start()
    admission = client.AdmissionregistrationV1Api(api)
    testing.wait_for(lambda: admission.read_mutating_webhook_configuration(name), 30, "the mutating webhook")
    testing.wait_for(
        lambda: admission.read_validating_webhook_configuration(name), 30, "the validating webhook"
    )
    testing.wait_for(lambda: _webhook_refuses(api, ns), 30, "the API server to call the validating webhook")
    yield proc
    proc.stop()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(f"\n[tieredkv] operator log (tail):\n{proc.tail()}")
    for delete in (
        admission.delete_mutating_webhook_configuration,
        admission.delete_validating_webhook_configuration,
    ):
        with contextlib.suppress(Exception):
            delete(name)
