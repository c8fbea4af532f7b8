"""The seed and the claim are never replaced behind the user's back, and a healthy cache raises no Warning."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.k8s import caches
from tests.k8s.operator_proc import OperatorProcess
from tieredkv_devcluster import testing

pytestmark = pytest.mark.k8s
SEED, BACKUP = "tieredkv-c-seed", "tieredkv-c-seed-backup"


def _create(api: client.ApiClient, ns: str, **spec: Any) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        caches.GROUP, caches.VERSION, ns, caches.PLURAL, caches.manifest("c", **spec)
    )


def _annotate(api: client.ApiClient, ns: str, annotations: dict[str, str]) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        caches.GROUP, caches.VERSION, ns, caches.PLURAL, "c", {"metadata": {"annotations": annotations}}
    )


def _seed(core: client.CoreV1Api, ns: str, name: str = SEED) -> str | None:
    try:
        secret = core.read_namespaced_secret(name, ns)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return base64.b64decode(secret.data["seed"]).decode()


def _warnings(core: client.CoreV1Api, ns: str) -> dict[str, str]:
    events = core.list_namespaced_event(ns, field_selector="involvedObject.name=c").items
    return {e.reason: e.message for e in events if e.type == "Warning"}


def _reason(api: client.ApiClient, ns: str, kind: str, reason: str) -> dict[str, Any] | None:
    obj = caches.get(api, ns, "c")
    cond = caches.condition(obj, kind)
    return obj if cond.get("reason") == reason and cond.get("status") == "False" else None


def test_a_healthy_cache_raises_no_warning_event_on_its_way_to_ready(
    api: client.ApiClient, ns: str, core: client.CoreV1Api, operator: OperatorProcess
) -> None:
    _create(api, ns)
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    time.sleep(3)  # a pass or two after Ready
    assert _warnings(core, ns) == {}


def test_a_deleted_seed_secret_is_reported_and_restored_with_the_same_seed(
    api: client.ApiClient, ns: str, core: client.CoreV1Api, operator: OperatorProcess
) -> None:
    _create(api, ns)
    ready = caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    seed, fingerprint = _seed(core, ns), ready["status"]["seedFingerprint"]
    assert seed is not None and _seed(core, ns, BACKUP) == seed and seed not in fingerprint
    core.delete_namespaced_secret(SEED, ns)
    testing.wait_for(lambda: "SeedSecretMissing" in _warnings(core, ns), 30, "a SeedSecretMissing Warning")
    assert "restored" in _warnings(core, ns)["SeedSecretMissing"]
    testing.wait_for(lambda: _seed(core, ns) is not None, 30, "the seed Secret to be restored")
    assert _seed(core, ns) == seed
    again = caches.wait_condition(api, ns, "c", "SeedConsistent", "True", timeout=30)
    assert again["status"]["seedFingerprint"] == fingerprint


def test_a_lost_seed_is_not_replaced_until_a_new_one_is_asked_for(
    api: client.ApiClient, ns: str, core: client.CoreV1Api, operator: OperatorProcess
) -> None:
    _create(api, ns)
    ready = caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    old = _seed(core, ns)
    operator.stop()  # both gone before any pass could restore one from the other
    core.delete_namespaced_secret(BACKUP, ns)
    core.delete_namespaced_secret(SEED, ns)
    operator.start()
    obj = testing.wait_for(lambda: _reason(api, ns, "SeedConsistent", "SeedSecretMissing"), 30, "lost")
    assert "lost" in caches.condition(obj, "SeedConsistent")["message"]
    time.sleep(5)  # two drift intervals: still nothing made up
    assert _seed(core, ns) is None and _seed(core, ns, BACKUP) is None
    _annotate(api, ns, {"tieredkv.io/regenerate-seed": "first"})
    testing.wait_for(lambda: _seed(core, ns) is not None, 30, "a new seed on request")
    assert _seed(core, ns, BACKUP) == _seed(core, ns) != old  # the backup is written first
    after = caches.wait_condition(api, ns, "c", "SeedConsistent", "True", timeout=30)
    assert after["status"]["seedFingerprint"] != ready["status"]["seedFingerprint"]
    assert after["status"]["handledRequests"] == {"tieredkv.io/regenerate-seed": "first"}
    assert "first" in _warnings(core, ns)["SeedRegenerated"]


def test_a_seed_edited_by_hand_is_reported_as_changed_until_it_is_put_back(
    api: client.ApiClient, ns: str, core: client.CoreV1Api, operator: OperatorProcess
) -> None:
    _create(api, ns)
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    seed = _seed(core, ns)
    core.patch_namespaced_secret(SEED, ns, {"stringData": {"seed": "12345"}})
    obj = testing.wait_for(lambda: _reason(api, ns, "SeedConsistent", "SeedChanged"), 30, "SeedChanged")
    assert "by hand" in caches.condition(obj, "SeedConsistent")["message"]
    assert _seed(core, ns) == "12345" and _seed(core, ns, BACKUP) == seed  # nothing overwritten
    core.patch_namespaced_secret(SEED, ns, {"stringData": {"seed": seed}})
    caches.wait_condition(api, ns, "c", "SeedConsistent", "True", timeout=30)


def _claim(core: client.CoreV1Api, ns: str) -> Any:
    try:
        return core.read_namespaced_persistent_volume_claim("tieredkv-c", ns)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_a_deleted_claim_is_reported_terminating_then_deleted_and_recreated_only_on_request(
    api: client.ApiClient, ns: str, core: client.CoreV1Api, operator: OperatorProcess
) -> None:
    _create(api, ns)
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    uid = _claim(core, ns).metadata.uid
    core.patch_namespaced_persistent_volume_claim(
        "tieredkv-c", ns, {"metadata": {"finalizers": ["test.tieredkv.io/hold"]}}
    )
    core.delete_namespaced_persistent_volume_claim("tieredkv-c", ns)
    testing.wait_for(lambda: _reason(api, ns, "StorageReady", "ClaimTerminating"), 30, "ClaimTerminating")
    assert caches.condition(caches.get(api, ns, "c"), "Ready")["status"] == "False"
    core.patch_namespaced_persistent_volume_claim("tieredkv-c", ns, {"metadata": {"finalizers": None}})
    testing.wait_for(lambda: _reason(api, ns, "StorageReady", "ClaimDeleted"), 30, "ClaimDeleted")
    time.sleep(5)  # two drift intervals: no new, empty claim behind the user's back
    assert _claim(core, ns) is None
    _annotate(api, ns, {"tieredkv.io/recreate-claim": "1"})
    testing.wait_for(lambda: _claim(core, ns) is not None, 30, "a new claim on request")
    assert _claim(core, ns).metadata.uid != uid
    caches.wait_condition(api, ns, "c", "StorageReady", "True", timeout=60)
