"""Malformed and hostile input: every case ends in an admission error, or a condition and an Event, or a
pod annotation; nothing is deleted by mistake."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.k8s import caches
from tests.k8s.operator_proc import OperatorProcess
from tests.k8s.test_webhook import vllm_pod
from tieredkv_devcluster import testing

pytestmark = pytest.mark.k8s

# (case, spec overrides, text the 422 must contain)
REJECTED: list[tuple[str, dict[str, Any], str]] = [
    ("no size and no claim", {"storage": {"accessModes": ["ReadWriteMany"]}}, "existingClaim"),
    ("size that is not a quantity", {"storage": {"size": "lots"}}, "storage.size"),
    ("watermarks reversed", {"capacity": {"highWatermark": 0.6, "lowWatermark": 0.8}}, "lowWatermark"),
    ("empty selector", {"vllm": {"version": "0.33", "cpuBytes": "1Gi", "selector": {}}}, "selector"),
    (
        "unknown vLLM line",
        {"vllm": {"version": "0.99", "cpuBytes": "1Gi", "selector": {"matchLabels": {"a": "b"}}}},
        "supported",
    ),
    ("maxBytes above size", {"capacity": {"maxBytes": "2Gi"}}, "maxBytes"),
    ("seed that Python refuses", {"hashSeed": {"value": "99999999999"}}, "hashSeed"),
    ("seed given twice", {"hashSeed": {"value": "1", "secretRef": {"name": "s"}}}, "hashSeed"),
    ("negative thread count", {"agent": {"readThreads": -1}}, "readThreads"),
    ("RAM tier in native mode", {"agent": {"ramTierBytes": "1Gi"}}, "ramTierBytes"),
    # What the agent refuses at start-up (a crash-looping DaemonSet before): its limits are shared.
    ("lowWatermark zero", {"capacity": {"lowWatermark": 0}}, "lowWatermark"),
    ("maxBytes zero", {"capacity": {"maxBytes": 0}}, "maxBytes"),
    ("socketDir /proc", {"agent": {"socketDir": "/proc"}}, "socketDir"),
    ("socketDir with a NUL byte", {"agent": {"socketDir": "/var/run/a\x00b"}}, "socketDir"),
    ("a 1024-character subPath", {"storage": {"size": "1Gi", "subPath": "a" * 1024}}, "subPath"),
    ("a 300-character subPath segment", {"storage": {"size": "1Gi", "subPath": "a" * 300}}, "subPath"),
    # What the API server refuses in a child (some children were created before).
    ("size zero", {"storage": {"size": "0"}}, "storage.size"),
    ("a nodeSelector key with a space", {"agent": {"nodeSelector": {"bad key!": "x"}}}, "nodeSelector"),
    ("a nodeSelector value too long", {"agent": {"nodeSelector": {"k": "v" * 64}}}, "nodeSelector"),
    (
        "toleration effect Bogus",
        {"agent": {"tolerations": [{"key": "k", "operator": "Exists", "effect": "Bogus"}]}},
        "tolerations",
    ),
    ("a toleration with a typo", {"agent": {"tolerations": [{"kee": "k"}]}}, "tolerations"),
    ("memory limit lots", {"agent": {"resources": {"limits": {"memory": "lots"}}}}, "resources"),
    (
        "requests above limits",
        {"agent": {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}},
        "resources",
    ),
    (
        "a storageClassName that is no name",
        {"storage": {"size": "1Gi", "storageClassName": "A_b"}},
        "storage",
    ),
    ("an image with a space", {"agent": {"image": "repo/agent v1"}}, "image"),
    (
        "a selector key with a space",
        {"vllm": {"version": "0.33", "cpuBytes": "1Gi", "selector": {"matchLabels": {"a b": "c"}}}},
        "selector",
    ),
    # Unknown fields: pruned silently before.
    ("a typo: highWaterMark", {"capacity": {"highWaterMark": 0.95}}, "highWaterMark"),
    ("an unknown section", {"agnet": {"readThreads": 2}}, "agnet"),
]
NAMES: list[tuple[str, str, str]] = [
    ("a dotted name (no Service can carry it)", "a.b.c", "metadata.name"),
    ("a name too long for the metrics Service", "n" * 50, "metadata.name"),
]


def test_malformed_caches_are_refused_at_admission_with_the_field_named(
    api: client.ApiClient, ns: str, webhook_operator: OperatorProcess
) -> None:
    custom = client.CustomObjectsApi(api)
    problems = []
    for i, (case, spec, needle) in enumerate(REJECTED):
        try:
            custom.create_namespaced_custom_object(
                caches.GROUP, caches.VERSION, ns, caches.PLURAL, caches.manifest(f"bad{i}", **spec)
            )
            problems.append(f"{case}: accepted")
        except ApiException as exc:
            if exc.status not in (400, 422) or needle not in exc.body:
                problems.append(f"{case}: {exc.status} {exc.body[:300]}")
    for case, name, needle in NAMES:
        try:
            custom.create_namespaced_custom_object(
                caches.GROUP, caches.VERSION, ns, caches.PLURAL, caches.manifest(name)
            )
            problems.append(f"{case}: accepted")
        except ApiException as exc:
            if exc.status not in (400, 422) or needle not in exc.body:
                problems.append(f"{case}: {exc.status} {exc.body[:300]}")
    assert not problems, "\n".join(problems)
    leftovers = client.CoreV1Api(api).list_namespaced_config_map(ns, label_selector="tieredkv.io/cache")
    assert not leftovers.items, "no child of a refused cache exists"


def test_changes_that_orphan_the_stored_blocks_are_refused_unless_allowed_and_then_recorded(
    api: client.ApiClient, ns: str, webhook_operator: OperatorProcess
) -> None:
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(
        caches.GROUP, caches.VERSION, ns, caches.PLURAL, caches.manifest("c")
    )
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    vllm = caches.manifest("c")["spec"]["vllm"]
    for change, needle in [
        ({"storage": {"subPath": "elsewhere"}}, "spec.storage.subPath"),
        ({"hashSeed": {"value": "42"}}, "spec.hashSeed"),
        ({"vllm": {**vllm, "hashAlgo": "xxhash"}}, "spec.vllm.hashAlgo"),
        ({"vllm": {**vllm, "version": "0.32"}}, "spec.vllm.version"),
    ]:
        with pytest.raises(ApiException) as err:
            custom.patch_namespaced_custom_object(
                caches.GROUP, caches.VERSION, ns, caches.PLURAL, "c", {"spec": change}
            )
        assert err.value.status == 422 and needle in err.value.body and "allow-orphaning" in err.value.body
    allowed = {
        "metadata": {"annotations": {"tieredkv.io/allow-orphaning": "true"}},
        "spec": {"storage": {"subPath": "elsewhere"}},
    }
    custom.patch_namespaced_custom_object(caches.GROUP, caches.VERSION, ns, caches.PLURAL, "c", allowed)

    def recorded() -> bool:
        events = client.CoreV1Api(api).list_namespaced_event(ns, field_selector="involvedObject.name=c")
        return any(e.reason == "BlocksOrphaned" and "elsewhere" in e.message for e in events.items)

    testing.wait_for(recorded, 30, "a BlocksOrphaned Event")
    obj = caches.wait_condition(api, ns, "c", "Ready", "True", timeout=60)
    assert "subPath=elsewhere" in obj["status"]["storeProfile"]


def test_immutable_fields_cannot_change_and_the_cache_keeps_working(
    api: client.ApiClient, ns: str, webhook_operator: OperatorProcess
) -> None:
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(
        caches.GROUP, caches.VERSION, ns, caches.PLURAL, caches.manifest("c")
    )
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    for change, needle in [
        ({"size": "512Mi"}, "size"),
        ({"accessModes": ["ReadWriteOnce"]}, "accessModes"),
        ({"size": None, "existingClaim": "other"}, "existingClaim"),
    ]:
        with pytest.raises(ApiException) as err:
            custom.patch_namespaced_custom_object(
                caches.GROUP, caches.VERSION, ns, caches.PLURAL, "c", {"spec": {"storage": change}}
            )
        assert err.value.status == 422 and needle in err.value.body, err.value.body
    assert client.CoreV1Api(api).read_namespaced_persistent_volume_claim("tieredkv-c", ns)
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=30)


def test_an_invalid_cache_that_slipped_past_admission_gets_a_condition_and_an_event_and_no_children(
    api: client.ApiClient, ns: str, operator: OperatorProcess
) -> None:
    """Without the webhook (e.g. it was down: failurePolicy Ignore), the reconcile still refuses it."""
    bad = caches.manifest("c", capacity={"highWatermark": 0.5, "lowWatermark": 0.7})
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        caches.GROUP, caches.VERSION, ns, caches.PLURAL, bad
    )
    obj = caches.wait_condition(api, ns, "c", "ConfigValid", "False", timeout=30)
    assert caches.condition(obj, "ConfigValid")["reason"] == "InvalidSpec"
    assert obj["status"]["phase"] == "Failed"
    events = client.CoreV1Api(api).list_namespaced_event(ns, field_selector="involvedObject.name=c").items
    assert any(
        e.type == "Warning" and e.reason == "InvalidSpec" and "lowWatermark" in e.message for e in events
    )
    assert (
        not client.CoreV1Api(api).list_namespaced_config_map(ns, label_selector="tieredkv.io/cache=c").items
    )
    assert not client.AppsV1Api(api).list_namespaced_daemon_set(ns).items


@pytest.mark.parametrize(
    ("case", "spec", "condition", "reason"),
    [
        (
            "secretRef to a missing Secret",
            {"hashSeed": {"secretRef": {"name": "later"}}},
            "SeedConsistent",
            "SeedSecretMissing",
        ),
        (
            "a storage class that never binds",
            {"storage": {"size": "1Gi", "storageClassName": "nobody-binds"}},
            "StorageReady",
            "ClaimPending",
        ),
        (
            "an existing claim that does not exist",
            {"storage": {"existingClaim": "nope"}},
            "StorageReady",
            "ClaimNotFound",
        ),
        (
            "a ReadWriteOnce claim with agents on two nodes",
            {"storage": {"existingClaim": "rwo"}},
            "StorageReady",
            "AccessModeMismatch",
        ),
    ],
)
def test_a_cache_whose_dependencies_are_wrong_says_so_in_a_condition_and_an_event(
    api: client.ApiClient,
    ns: str,
    operator: OperatorProcess,
    *,
    case: str,
    spec: dict[str, Any],
    condition: str,
    reason: str,
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_persistent_volume_claim(
        ns,
        {
            "metadata": {"name": "rwo"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        caches.GROUP, caches.VERSION, ns, caches.PLURAL, caches.manifest("c", **spec)
    )
    obj = testing.wait_for(
        lambda: _with_reason(api, ns, condition, reason), 60, f"{condition}=False reason {reason}"
    )
    assert caches.condition(obj, "Ready")["status"] == "False", case

    def warned() -> bool:
        events = core.list_namespaced_event(ns, field_selector="involvedObject.name=c").items
        return any(e.type == "Warning" and e.reason == reason for e in events)

    testing.wait_for(warned, 30, f"a Warning Event with reason {reason}")
    if reason == "SeedSecretMissing":  # creating the Secret later recovers the cache
        core.create_namespaced_secret(ns, {"metadata": {"name": "later"}, "stringData": {"seed": "1234"}})
        caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)


def _with_reason(api: client.ApiClient, ns: str, condition: str, reason: str) -> dict[str, Any] | None:
    obj = caches.get(api, ns, "c")
    cond = caches.condition(obj, condition)
    return obj if cond.get("reason") == reason and cond.get("status") == "False" else None


# (case, pod, expected skip reason)
HOSTILE_PODS: list[tuple[str, dict[str, Any], str]] = [
    ("its own seed", vllm_pod("own-seed", env=[{"name": "PYTHONHASHSEED", "value": "7"}]), "seed-conflict"),
    (
        "a shell command",
        vllm_pod("shell", command=["sh", "-c", "vllm serve m"], args=[]),
        "command-not-recognised",
    ),
    (
        "its own kv-transfer-config",
        vllm_pod("own-config", args=["m", "--kv-transfer-config", "{}"]),
        "kv-transfer-config-present",
    ),
    ("no container named vllm", vllm_pod("renamed", container_name="server"), "container-not-found"),
]


def test_opted_in_pods_that_cannot_be_injected_are_annotated_with_the_reason_and_left_alone(
    api: client.ApiClient, ns: str, webhook_operator: OperatorProcess
) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        caches.GROUP, caches.VERSION, ns, caches.PLURAL, caches.manifest("c")
    )
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    core = client.CoreV1Api(api)
    unknown = vllm_pod("unknown-cache")
    unknown["metadata"]["annotations"] = {"tieredkv.io/cache": "missing"}
    problems = []
    for case, pod, expected in [*HOSTILE_PODS, ("a cache that does not exist", unknown, "cache-not-found")]:
        created = core.create_namespaced_pod(ns, pod)
        got = (created.metadata.annotations or {}).get("tieredkv.io/skip-reason")
        if got != expected:
            problems.append(f"{case}: skip-reason {got!r}, want {expected!r}")
        sent, stored = pod["spec"]["containers"][0], created.spec.containers[0]
        untouched = (
            stored.command == sent.get("command")
            and (stored.args or []) == (sent.get("args") or [])
            and [e.name for e in stored.env or []] == [e["name"] for e in sent.get("env") or []]
            and not created.spec.init_containers
            and not any(v.name.startswith("tieredkv") or v.name == "dshm" for v in created.spec.volumes)
        )
        if not untouched:
            problems.append(f"{case}: the pod was modified: {stored.to_dict()}")
    assert not problems, "\n".join(problems)


def test_a_cache_whose_children_the_api_would_refuse_gets_a_condition_and_no_children_without_the_webhook(
    api: client.ApiClient, ns: str, operator: OperatorProcess
) -> None:
    """A dotted name passes the CRD, but no Service can carry it; the reconcile says so, webhook or not."""
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        caches.GROUP, caches.VERSION, ns, caches.PLURAL, caches.manifest("a.b")
    )
    obj = caches.wait_condition(api, ns, "a.b", "ConfigValid", "False", timeout=30)
    assert "metadata.name: Service" in caches.condition(obj, "ConfigValid")["message"]
    assert not client.CoreV1Api(api).list_namespaced_config_map(ns, label_selector="tieredkv.io/cache").items
    assert not client.AppsV1Api(api).list_namespaced_daemon_set(ns).items
