"""Builders of the node-agent DaemonSet and its metrics Service (pure).

The pod template carries `tieredkv.io/config-hash`, a hash of the template itself: any change that
shapes the agent pods changes it and rolls the DaemonSet; an identical rebuild changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tieredkv_operator import names
from tieredkv_operator.names import CacheRef
from tieredkv_operator.spec import TieredKVCacheSpec

Manifest = dict[str, Any]
STORE_VOLUME = "store"
SOCKET_VOLUME = "sockets"


def _field(path: str) -> Manifest:
    return {"valueFrom": {"fieldRef": {"fieldPath": path}}}


def agent_env(
    cache: CacheRef, spec: TieredKVCacheSpec, max_bytes: int | None, config_hash: str
) -> list[Manifest]:
    """The agent's settings as TIEREDKV_* variables (its pydantic settings read them) plus the seed.

    The vLLM config hash is there so an agent can refuse instances whose profile differs from its cache's,
    and so a change of the rendered config rolls the agents.
    """
    seed_name, seed_key = names.seed_secret(cache.name, spec)
    agent, cap = spec.agent, spec.capacity
    plain: dict[str, object] = {
        "TIEREDKV_CACHE_NAME": cache.name,
        "TIEREDKV_CACHE_NAMESPACE": cache.namespace,
        "TIEREDKV_MODE": spec.vllm.mode.value,
        "TIEREDKV_VLLM_VERSION": spec.vllm.version,
        "TIEREDKV_VLLM_CONFIG_HASH": config_hash,
        "TIEREDKV_HASH_ALGO": spec.vllm.hash_algo.value,
        "TIEREDKV_ON_PROFILE_MISMATCH": spec.agent.on_profile_mismatch,
        "TIEREDKV_STORE_DIR": names.STORE_MOUNT_PATH,
        "TIEREDKV_SOCKET_DIR": names.socket_host_dir(agent.socket_dir, cache.namespace, cache.name),
        "TIEREDKV_VOLUME_LATENCY": agent.volume_latency,
        "TIEREDKV_RAM_TIER_BYTES": agent.ram_tier_bytes,
        "TIEREDKV_STORE_ADMISSION_THRESHOLD": agent.store_admission.threshold,
        "TIEREDKV_STORE_ADMISSION_MAX_TRACKER_SIZE": agent.store_admission.max_tracker_size,
        "TIEREDKV_HIGH_WATERMARK": cap.high_watermark,
        "TIEREDKV_LOW_WATERMARK": cap.low_watermark,
        "TIEREDKV_GC_LEASE_NAME": names.gc_lease_name(cache.name),
        "TIEREDKV_METRICS_PORT": names.METRICS_PORT,
    }
    if agent.read_threads is not None:
        plain["TIEREDKV_READ_THREADS"] = agent.read_threads
    if agent.write_threads is not None:
        plain["TIEREDKV_WRITE_THREADS"] = agent.write_threads
    if max_bytes is not None:
        plain["TIEREDKV_MAX_BYTES"] = max_bytes
    plain.update(events_env(spec))
    env: list[Manifest] = [{"name": k, "value": str(v)} for k, v in plain.items()]
    env += [
        {"name": "TIEREDKV_NODE_NAME", **_field("spec.nodeName")},
        {"name": "TIEREDKV_POD_NAME", **_field("metadata.name")},
        {"name": "TIEREDKV_POD_IP", **_field("status.podIP")},
        {"name": "PYTHONHASHSEED", "valueFrom": {"secretKeyRef": {"name": seed_name, "key": seed_key}}},
    ]
    return env


def events_env(spec: TieredKVCacheSpec) -> dict[str, object]:
    """The agents' KV-events settings; none while events are off, so enabling them is the only change."""
    events = spec.events
    if not events.enabled:
        return {}
    env: dict[str, object] = {
        "TIEREDKV_EVENTS_ENABLED": "true",
        "TIEREDKV_EVENTS_PORT": events.port,
        "TIEREDKV_EVENTS_REPLAY_PORT": events.replay_port,
        "TIEREDKV_EVENTS_SUMMARY_PORT": events.summary_port,
    }
    chosen = events.filter.model_dump(exclude_defaults=True)  # a default filter renders nothing
    for name, values in sorted(chosen.items()):
        env[f"TIEREDKV_EVENTS_{name.upper()}"] = json.dumps(
            [str(v) if name == "kinds" else v for v in values]
        )
    return env


def events_ports(spec: TieredKVCacheSpec, *, service: bool = False) -> list[Manifest]:
    """The container (with `service`: Service) ports of the KV-events sockets; none while events are off."""
    if not spec.events.enabled:
        return []
    ports = [
        (names.EVENTS_PORT_NAME, spec.events.port),
        (names.EVENTS_REPLAY_PORT_NAME, spec.events.replay_port),
        (names.EVENTS_SUMMARY_PORT_NAME, spec.events.summary_port),
    ]
    if service:
        return [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in ports]
    return [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports]


def _container(
    cache: CacheRef, spec: TieredKVCacheSpec, image: str, max_bytes: int | None, config_hash: str
) -> Manifest:
    socket_dir = names.socket_host_dir(spec.agent.socket_dir, cache.namespace, cache.name)
    store_mount: Manifest = {"name": STORE_VOLUME, "mountPath": names.STORE_MOUNT_PATH}
    if spec.storage.sub_path:
        store_mount["subPath"] = spec.storage.sub_path
    return {
        "name": "agent",
        "image": image,
        "command": ["tieredkv-agent", "run"],
        "env": agent_env(cache, spec, max_bytes, config_hash),
        "ports": [
            {"name": "metrics", "containerPort": names.METRICS_PORT, "protocol": "TCP"},
            *events_ports(spec),
        ],
        "readinessProbe": {"httpGet": {"path": "/metrics", "port": "metrics"}, "periodSeconds": 2},
        "resources": spec.agent.resources,
        "volumeMounts": [store_mount, {"name": SOCKET_VOLUME, "mountPath": socket_dir}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def pod_template(
    cache: CacheRef,
    spec: TieredKVCacheSpec,
    *,
    image: str,
    max_bytes: int | None,
    config_hash: str,
    pod_annotations: dict[str, str] | None = None,
) -> Manifest:
    """The agent pod template, stamped with the hash of its own content."""
    socket_dir = names.socket_host_dir(spec.agent.socket_dir, cache.namespace, cache.name)
    pod_spec: Manifest = {
        "serviceAccountName": names.agent_name(cache.name),
        "nodeSelector": spec.agent.node_selector,
        "tolerations": spec.agent.tolerations,
        "terminationGracePeriodSeconds": 30,
        "containers": [_container(cache, spec, image, max_bytes, config_hash)],
        "volumes": [
            {"name": STORE_VOLUME, "persistentVolumeClaim": {"claimName": names.pvc_name(cache.name, spec)}},
            {"name": SOCKET_VOLUME, "hostPath": {"path": socket_dir, "type": "DirectoryOrCreate"}},
        ],
    }
    template: Manifest = {
        "metadata": {
            "labels": names.selector_labels(cache.name, "agent"),
            "annotations": dict(pod_annotations or {}),
        },
        "spec": pod_spec,
    }
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]
    template["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH] = digest
    return template


def daemon_set(cache: CacheRef, spec: TieredKVCacheSpec, template: Manifest) -> Manifest:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": names.agent_name(cache.name),
            "namespace": cache.namespace,
            "labels": names.labels(cache.name, "agent"),
            "ownerReferences": [cache.owner_reference()],
        },
        "spec": {
            "selector": {"matchLabels": names.selector_labels(cache.name, "agent")},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": template,
        },
    }


def metrics_service(cache: CacheRef, spec: TieredKVCacheSpec | None = None) -> Manifest:
    """Headless Service over the agents' metrics ports, for ServiceMonitors and ad-hoc scraping, and over
    their KV-events ports when `spec.events` is on (its DNS name resolves to every agent, which is what a
    subscriber connects to)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": names.metrics_service_name(cache.name),
            "namespace": cache.namespace,
            "labels": names.labels(cache.name, "agent-metrics"),
            "ownerReferences": [cache.owner_reference()],
        },
        "spec": {
            "clusterIP": "None",
            "selector": names.selector_labels(cache.name, "agent"),
            "ports": [
                {"name": "metrics", "port": names.METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
                *(events_ports(spec, service=True) if spec is not None else []),
            ],
        },
    }
