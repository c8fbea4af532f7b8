"""The operator's admission webhooks, called by the real API server: pod injection and CR validation."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.k8s import caches
from tests.k8s.operator_proc import OperatorProcess
from tieredkv_devcluster import testing

pytestmark = pytest.mark.k8s


def vllm_pod(name: str, container_name: str = "vllm", **container: Any) -> dict[str, Any]:
    main = {
        "name": container_name,
        "image": "vllm/vllm-openai:v0.33.0",
        "command": ["vllm", "serve"],
        "args": ["meta-llama/Llama-3.1-8B", "--port=8000"],
        **container,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "vllm", "tieredkv.io/inject": "true"}},
        "spec": {"containers": [main]},
    }


def _ready_cache(api: client.ApiClient, ns: str, **spec: Any) -> dict[str, Any]:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        caches.GROUP, caches.VERSION, ns, caches.PLURAL, caches.manifest("c", **spec)
    )
    return caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)


def test_an_opted_in_pod_gets_exactly_the_seed_config_and_mounts(
    api: client.ApiClient, ns: str, webhook_operator: OperatorProcess
) -> None:
    obj = _ready_cache(api, ns)
    pod = client.CoreV1Api(api).create_namespaced_pod(ns, vllm_pod("p"))
    ann = pod.metadata.annotations
    assert (
        ann["tieredkv.io/injected"] == "c" and ann["tieredkv.io/config-hash"] == obj["status"]["configHash"]
    )
    assert pod.metadata.labels["tieredkv.io/cache"] == "c"
    (main,) = pod.spec.containers
    env = {e.name: e for e in main.env}
    assert env["PYTHONHASHSEED"].value_from.secret_key_ref.name == "tieredkv-c-seed"
    assert env["TIEREDKV_KV_TRANSFER_CONFIG"].value_from.config_map_key_ref.name == "tieredkv-c-vllm"
    assert main.args[-2:] == ["--kv-transfer-config", "$(TIEREDKV_KV_TRANSFER_CONFIG)"]
    mounts = {m.mount_path: m.name for m in main.volume_mounts}
    volumes = {v.name: v for v in pod.spec.volumes}
    assert volumes[mounts["/mnt/tieredkv"]].persistent_volume_claim.claim_name == "tieredkv-c"
    assert volumes[mounts["/dev/shm"]].empty_dir.medium == "Memory"
    testing.wait_for(
        lambda: caches.get(api, ns, "c")["status"].get("injectedPods") == 1, 20, "injectedPods=1"
    )


def test_admitting_an_injected_pod_again_changes_nothing(
    api: client.ApiClient, ns: str, webhook_operator: OperatorProcess
) -> None:
    _ready_cache(api, ns)
    core = client.CoreV1Api(api)
    first = api.sanitize_for_serialization(core.create_namespaced_pod(ns, vllm_pod("p1")))
    again = copy.deepcopy(first)
    again.pop("status", None)
    again["metadata"] = {k: v for k, v in first["metadata"].items() if k in ("labels", "annotations")}
    again["metadata"]["name"] = "p2"
    second = api.sanitize_for_serialization(core.create_namespaced_pod(ns, again))
    assert second["spec"]["containers"] == first["spec"]["containers"]
    assert second["spec"]["volumes"] == first["spec"]["volumes"]


def test_a_pod_with_its_own_seed_is_left_alone_annotated_and_flips_seed_consistent(
    api: client.ApiClient, ns: str, webhook_operator: OperatorProcess
) -> None:
    _ready_cache(api, ns)
    pod = client.CoreV1Api(api).create_namespaced_pod(
        ns, vllm_pod("rogue", env=[{"name": "PYTHONHASHSEED", "value": "42"}])
    )
    assert pod.metadata.annotations["tieredkv.io/skip-reason"] == "seed-conflict"
    assert [e.name for e in pod.spec.containers[0].env] == ["PYTHONHASHSEED"]
    assert "tieredkv.io/injected" not in pod.metadata.annotations
    obj = caches.wait_condition(api, ns, "c", "SeedConsistent", "False", timeout=30)
    assert "rogue" in caches.condition(obj, "SeedConsistent")["message"]
    assert obj["status"]["phase"] == "Degraded"
    client.CoreV1Api(api).delete_namespaced_pod("rogue", ns, grace_period_seconds=0)
    caches.wait_condition(api, ns, "c", "SeedConsistent", "True", timeout=30)


def test_the_validating_webhook_refuses_what_the_schema_cannot_express(
    api: client.ApiClient, ns: str, webhook_operator: OperatorProcess
) -> None:
    custom = client.CustomObjectsApi(api)
    bad = caches.manifest("c", capacity={"highWatermark": 0.5, "lowWatermark": 0.7})
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(caches.GROUP, caches.VERSION, ns, caches.PLURAL, bad)
    assert err.value.status == 422 and "lowWatermark" in err.value.body
    _ready_cache(api, ns)
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(
            caches.GROUP, caches.VERSION, ns, caches.PLURAL, "c", {"spec": {"storage": {"size": "512Mi"}}}
        )
    assert err.value.status == 422 and "size" in err.value.body
