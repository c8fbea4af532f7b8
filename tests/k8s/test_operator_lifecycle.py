"""The operator reconciles a TieredKVCache into its children, keeps them converged, and cleans up."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.k8s import caches
from tests.k8s.operator_proc import OperatorProcess
from tieredkv_devcluster import testing

pytestmark = pytest.mark.k8s

OWNED = [
    ("ConfigMap", "tieredkv-c-vllm"),
    ("DaemonSet", "tieredkv-c-agent"),
    ("ServiceAccount", "tieredkv-c-agent"),
    ("Role", "tieredkv-c-agent"),
    ("RoleBinding", "tieredkv-c-agent"),
    ("Service", "tieredkv-c-metrics"),
]


def _read(api: client.ApiClient, kind: str, ns: str, name: str) -> Any:
    core, apps, rbac = client.CoreV1Api(api), client.AppsV1Api(api), client.RbacAuthorizationV1Api(api)
    readers = {
        "ConfigMap": core.read_namespaced_config_map,
        "Secret": core.read_namespaced_secret,
        "PersistentVolumeClaim": core.read_namespaced_persistent_volume_claim,
        "ServiceAccount": core.read_namespaced_service_account,
        "Service": core.read_namespaced_service,
        "DaemonSet": apps.read_namespaced_daemon_set,
        "Role": rbac.read_namespaced_role,
        "RoleBinding": rbac.read_namespaced_role_binding,
    }
    return readers[kind](name, ns)


def _exists(api: client.ApiClient, kind: str, ns: str, name: str) -> bool:
    try:
        _read(api, kind, ns, name)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _create(api: client.ApiClient, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    custom = client.CustomObjectsApi(api)
    created: dict[str, Any] = custom.create_namespaced_custom_object(
        caches.GROUP, caches.VERSION, ns, caches.PLURAL, body
    )
    return created


def _patch(api: client.ApiClient, ns: str, name: str, patch: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        caches.GROUP, caches.VERSION, ns, caches.PLURAL, name, patch
    )


def test_a_new_cache_gets_its_children_owned_and_real_agents_become_ready(
    api: client.ApiClient, ns: str, operator: OperatorProcess
) -> None:
    created = _create(api, ns, caches.manifest("c"))
    obj = caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    status = obj["status"]
    assert status["phase"] == "Ready"
    assert status["agents"] == {"desired": 2, "ready": 2}
    assert status["pvcName"] == "tieredkv-c" and status["seedSecretName"] == "tieredkv-c-seed"
    uid = created["metadata"]["uid"]
    for kind, name in OWNED:
        owners = _read(api, kind, ns, name).metadata.owner_references or []
        assert [(o.uid, o.controller) for o in owners] == [(uid, True)], (
            f"{kind} {name} is not owned by the cache"
        )
    for kind, name in [("PersistentVolumeClaim", "tieredkv-c"), ("Secret", "tieredkv-c-seed")]:
        assert not _read(api, kind, ns, name).metadata.owner_references, f"{kind} must outlive the cache"
    seed = _read(api, "Secret", ns, "tieredkv-c-seed")
    assert seed.data["seed"], "a seed was generated"

    # The agents run as real processes under their ServiceAccount: the Role lets them elect a GC leader.
    agents = {
        p.metadata.name
        for p in client.CoreV1Api(api).list_namespaced_pod(ns, label_selector="tieredkv.io/cache=c").items
    }
    lease = testing.wait_for(
        lambda: client.CoordinationV1Api(api).read_namespaced_lease("tieredkv-c-gc", ns),
        30,
        "the GC leader Lease",
    )
    assert lease.spec.holder_identity in agents


def _template_hash(api: client.ApiClient, ns: str) -> str:
    ds = client.AppsV1Api(api).read_namespaced_daemon_set("tieredkv-c-agent", ns)
    return str(ds.spec.template.metadata.annotations["tieredkv.io/config-hash"])


def test_changing_cpu_bytes_updates_the_config_and_rolls_the_agents_and_a_no_op_does_not(
    api: client.ApiClient, ns: str, operator: OperatorProcess
) -> None:
    _create(api, ns, caches.manifest("c"))
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    config_before = _read(api, "ConfigMap", ns, "tieredkv-c-vllm").data["kv-transfer-config.json"]
    hash_before = _template_hash(api, ns)
    ds_generation = (
        client.AppsV1Api(api).read_namespaced_daemon_set("tieredkv-c-agent", ns).metadata.generation
    )

    _patch(api, ns, "c", {"metadata": {"labels": {"team": "inference"}}})  # touches no spec field
    _patch(api, ns, "c", {"spec": {"vllm": {"cpuBytes": "1Gi"}}})  # the same value: a no-op
    _patch(api, ns, "c", {"spec": {"vllm": {"cpuBytes": "2Gi"}}})
    # The operator handles one cache's events in order: once the last patch's generation is reconciled, so
    # were the two before it. The DaemonSet's generation then tells how many times its template changed.
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    config_after = _read(api, "ConfigMap", ns, "tieredkv-c-vllm").data["kv-transfer-config.json"]
    assert '"cpu_bytes_to_use":2147483648' in config_after.replace(" ", "") and config_after != config_before
    assert _template_hash(api, ns) != hash_before
    ds_after = client.AppsV1Api(api).read_namespaced_daemon_set("tieredkv-c-agent", ns).metadata.generation
    assert ds_after == ds_generation + 1, "the label patch or the same-value patch rolled the agents"


def test_a_deleted_or_edited_child_is_repaired_within_the_drift_interval(
    api: client.ApiClient, ns: str, operator: OperatorProcess
) -> None:
    _create(api, ns, caches.manifest("c"))
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    rendered = core.read_namespaced_config_map("tieredkv-c-vllm", ns).data["kv-transfer-config.json"]
    core.patch_namespaced_config_map("tieredkv-c-vllm", ns, {"data": {"kv-transfer-config.json": "{}"}})
    apps.delete_namespaced_daemon_set("tieredkv-c-agent", ns)
    testing.wait_for(
        lambda: (
            core.read_namespaced_config_map("tieredkv-c-vllm", ns).data["kv-transfer-config.json"] == rendered
        ),
        15,
        "the ConfigMap to be restored",
    )
    testing.wait_for(
        lambda: _exists(api, "DaemonSet", ns, "tieredkv-c-agent"), 15, "the DaemonSet to come back"
    )
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)


def _gone(api: client.ApiClient, kind: str, ns: str, name: str) -> bool:
    return not _exists(api, kind, ns, name)


def test_deleting_a_cache_removes_its_children_but_keeps_claim_and_seed_by_default(
    api: client.ApiClient, ns: str, operator: OperatorProcess
) -> None:
    _create(api, ns, caches.manifest("c"))
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        caches.GROUP, caches.VERSION, ns, caches.PLURAL, "c"
    )
    for kind, name in OWNED:
        testing.wait_for(lambda k=kind, n=name: _gone(api, k, ns, n), 60, f"{kind} {name} to be collected")
    assert _exists(api, "PersistentVolumeClaim", ns, "tieredkv-c")
    assert _exists(api, "Secret", ns, "tieredkv-c-seed")


def test_with_retain_on_delete_false_the_claim_and_seed_go_with_the_cache(
    api: client.ApiClient, ns: str, operator: OperatorProcess
) -> None:
    _create(api, ns, caches.manifest("c", storage={"size": "1Gi", "retainOnDelete": False}))
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        caches.GROUP, caches.VERSION, ns, caches.PLURAL, "c"
    )
    for kind, name in [("PersistentVolumeClaim", "tieredkv-c"), ("Secret", "tieredkv-c-seed")]:
        testing.wait_for(lambda k=kind, n=name: _gone(api, k, ns, n), 60, f"{kind} {name} to be collected")


def test_a_recreated_cache_finds_its_retained_seed_unchanged(
    api: client.ApiClient, ns: str, operator: OperatorProcess
) -> None:
    _create(api, ns, caches.manifest("c"))
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    seed = _read(api, "Secret", ns, "tieredkv-c-seed").data["seed"]
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        caches.GROUP, caches.VERSION, ns, caches.PLURAL, "c"
    )
    testing.wait_for(
        lambda: _gone(api, "ConfigMap", ns, "tieredkv-c-vllm"), 120, "the old children to go"
    )  # the GC controller is asynchronous
    _create(api, ns, caches.manifest("c"))
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    assert _read(api, "Secret", ns, "tieredkv-c-seed").data["seed"] == seed


def test_an_operator_restarted_mid_way_converges_without_duplicates(
    api: client.ApiClient, ns: str, operator: OperatorProcess
) -> None:
    operator.stop()
    _create(api, ns, caches.manifest("c"))
    operator.start()
    testing.wait_for(
        lambda: _exists(api, "ConfigMap", ns, "tieredkv-c-vllm"), 30, "the operator to start work"
    )
    operator.stop()  # killed part-way through its first reconciles
    operator.start()
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    assert len(apps.list_namespaced_daemon_set(ns).items) == 1
    assert len(core.list_namespaced_persistent_volume_claim(ns).items) == 1
    seeds = [
        s.metadata.name
        for s in core.list_namespaced_secret(ns).items
        if s.metadata.name.startswith("tieredkv-c-seed")
    ]
    assert sorted(seeds) == ["tieredkv-c-seed", "tieredkv-c-seed-backup"]


def test_a_cache_carries_no_finalizer_so_it_can_be_deleted_while_the_operator_is_not_running(
    api: client.ApiClient, ns: str, operator: OperatorProcess
) -> None:
    _create(api, ns, caches.manifest("c"))
    obj = caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    assert not obj["metadata"].get("finalizers"), obj["metadata"].get("finalizers")
    operator.stop()
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        caches.GROUP, caches.VERSION, ns, caches.PLURAL, "c"
    )

    def cache_gone() -> bool:
        try:
            caches.get(api, ns, "c")
        except ApiException as exc:
            return exc.status == 404
        return False

    testing.wait_for(cache_gone, 30, "the cache to be deleted without the operator")
    testing.wait_for(
        lambda: _gone(api, "DaemonSet", ns, "tieredkv-c-agent"), 60, "its children to be collected"
    )
