"""Drift repair makes each child equal to its desired object: what someone else added is removed too."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client

from tests.k8s import caches
from tests.k8s.operator_proc import OperatorProcess
from tieredkv_devcluster import testing

pytestmark = pytest.mark.k8s
AGENT, CONFIG = "tieredkv-c-agent", "tieredkv-c-vllm"


def _ready_cache(api: client.ApiClient, ns: str) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        caches.GROUP, caches.VERSION, ns, caches.PLURAL, caches.manifest("c")
    )
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)


def _repaired_event(core: client.CoreV1Api, ns: str, kind: str) -> bool:
    events = core.list_namespaced_event(ns, field_selector="involvedObject.name=c").items
    return any(e.reason == "DriftRepaired" and e.message.startswith(kind) for e in events)


def test_a_node_selector_added_by_hand_to_the_agent_daemon_set_is_removed(
    api: client.ApiClient, ns: str, core: client.CoreV1Api, operator: OperatorProcess
) -> None:
    _ready_cache(api, ns)
    apps = client.AppsV1Api(api)
    patch = {"spec": {"template": {"spec": {"nodeSelector": {"nobody": "here"}}}}}
    apps.patch_namespaced_daemon_set(AGENT, ns, patch)

    def cleaned() -> bool:
        selector = apps.read_namespaced_daemon_set(AGENT, ns).spec.template.spec.node_selector
        return not selector

    testing.wait_for(cleaned, 20, "the foreign nodeSelector to be removed")
    testing.wait_for(lambda: _repaired_event(core, ns, "DaemonSet"), 10, "a DriftRepaired Event")
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=60)


def test_a_host_path_sidecar_added_to_the_agent_daemon_set_is_removed(
    api: client.ApiClient, ns: str, core: client.CoreV1Api, operator: OperatorProcess
) -> None:
    _ready_cache(api, ns)
    apps = client.AppsV1Api(api)
    sidecar: dict[str, Any] = {
        "name": "sidecar",
        "image": "busybox",
        "volumeMounts": [{"name": "root", "mountPath": "/host"}],
    }
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [sidecar],
                    "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
                }
            }
        }
    }
    apps.patch_namespaced_daemon_set(AGENT, ns, patch)  # strategic merge: added next to ours

    def cleaned() -> bool:
        pod = apps.read_namespaced_daemon_set(AGENT, ns).spec.template.spec
        return [c.name for c in pod.containers] == ["agent"] and all(v.name != "root" for v in pod.volumes)

    testing.wait_for(cleaned, 20, "the sidecar and its hostPath volume to be removed")
    testing.wait_for(lambda: _repaired_event(core, ns, "DaemonSet"), 10, "a DriftRepaired Event")


def test_extra_keys_added_to_the_rendered_config_map_are_removed(
    api: client.ApiClient, ns: str, core: client.CoreV1Api, operator: OperatorProcess
) -> None:
    _ready_cache(api, ns)
    core.patch_namespaced_config_map(CONFIG, ns, {"data": {"extra.json": "{}"}})
    testing.wait_for(
        lambda: list(core.read_namespaced_config_map(CONFIG, ns).data) == ["kv-transfer-config.json"],
        20,
        "the extra key to be removed",
    )
    testing.wait_for(lambda: _repaired_event(core, ns, "ConfigMap"), 10, "a DriftRepaired Event")


def test_metadata_others_add_to_a_child_is_left_alone(
    api: client.ApiClient, ns: str, core: client.CoreV1Api, operator: OperatorProcess
) -> None:
    _ready_cache(api, ns)
    core.patch_namespaced_config_map(CONFIG, ns, {"metadata": {"labels": {"team": "infra"}}})
    time.sleep(5)  # a few drift intervals
    caches.wait_condition(api, ns, "c", "Ready", "True", timeout=30)
    assert core.read_namespaced_config_map(CONFIG, ns).metadata.labels["team"] == "infra"
    assert not _repaired_event(core, ns, "ConfigMap")
