"""Check the children a spec would produce by the API server's rules, before any of them exists (pure).

The validating webhook builds every child with the same builders the reconcile uses and runs them through
`api_rules`, so a spec is refused (naming the field it comes from) instead of half its children being
created and the rest refused by the API server. The model's own validators already catch most of these;
this is the net under them for what only shows in the built objects (names, sizes, rendered config).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Final

from tieredkv_operator import api_rules, names
from tieredkv_operator.names import CacheRef
from tieredkv_operator.resources import agents, rbac, storage, vllm_configmap
from tieredkv_operator.spec import TieredKVCacheSpec

Manifest = dict[str, Any]
MAX_CONFIG_MAP_BYTES: Final = 1024 * 1024
"""core/v1 ConfigMap: keys and values together at most 1 MiB."""
CONFIG_MAP_KEY: Final = re.compile(r"^[-._a-zA-Z0-9]+$")
ENV_NAME: Final = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_PLACEHOLDER_UID: Final = "00000000-0000-0000-0000-000000000000"
_PLACEHOLDER_IMAGE: Final = "tieredkv/agent:admission-check"
_PLACEHOLDER_HASH: Final = "0" * 16


def built_children(name: str, namespace: str, spec: TieredKVCacheSpec) -> list[Manifest]:
    """Every child the reconcile would apply for this spec (the agent image and config hash stand-ins)."""
    cache = CacheRef(name, namespace, _PLACEHOLDER_UID)
    config_map = vllm_configmap.config_map(cache, spec)
    template = agents.pod_template(
        cache,
        spec,
        image=spec.agent.image or _PLACEHOLDER_IMAGE,
        max_bytes=spec.effective_max_bytes(),
        config_hash=config_map["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH],
    )
    children = [
        storage.claim(cache, spec),
        storage.seed_secret(cache, spec, "0"),
        storage.seed_backup(cache, spec, "0"),
        config_map,
        rbac.service_account(cache),
        rbac.role(cache),
        rbac.role_binding(cache),
        agents.metrics_service(cache, spec),
        agents.daemon_set(cache, spec, template),
    ]
    return [child for child in children if child is not None]


def child_errors(name: str, namespace: str, spec: TieredKVCacheSpec) -> list[str]:
    """One line per problem the API server would have with a child of this cache, naming the spec field."""
    problems: list[str] = []
    for child in built_children(name, namespace or "default", spec):
        check = _CHECKS.get(child["kind"])
        found = [*_metadata(child), *(check(child) if check else [])]
        problems += [
            f"{where}: {child['kind']} {child['metadata']['name']!r} {what}" for where, what in found
        ]
    return problems


Problem = tuple[str, str]  # (spec field it comes from, what the API server would say)


def _metadata(child: Manifest) -> list[Problem]:
    meta = child["metadata"]
    rule = api_rules.dns_label if child["kind"] == "Service" else api_rules.dns_subdomain
    found = [("metadata.name", f"name: {p}") for p in rule(meta["name"])]
    found += [("metadata.name", f"labels: {p}") for p in api_rules.labels(meta.get("labels") or {})]
    return found


def _claim(child: Manifest) -> list[Problem]:
    spec = child["spec"]
    size = api_rules.quantity(spec["resources"]["requests"]["storage"])
    found = [] if size is not None and size > 0 else [("spec.storage.size", "requests no storage (need > 0)")]
    if "storageClassName" in spec:
        found += [
            ("spec.storage.storageClassName", p) for p in api_rules.dns_subdomain(spec["storageClassName"])
        ]
    return found


def _config_map(child: Manifest) -> list[Problem]:
    data: dict[str, str] = child.get("data") or {}
    found = [("spec.vllm", f"data key {k!r} is not valid") for k in data if not CONFIG_MAP_KEY.match(k)]
    size = sum(len(k.encode()) + len(v.encode()) for k, v in data.items())
    if size > MAX_CONFIG_MAP_BYTES:
        found.append(("spec.vllm.extraConfig", f"would hold {size} bytes, a ConfigMap holds at most 1 MiB"))
    return found


def _daemon_set(child: Manifest) -> list[Problem]:
    pod = child["spec"]["template"]["spec"]
    found = [("spec.agent.nodeSelector", p) for p in api_rules.labels(pod.get("nodeSelector") or {})]
    for i, item in enumerate(pod.get("tolerations") or []):
        found += [(f"spec.agent.tolerations[{i}]", p) for p in api_rules.toleration(item)]
    for volume in pod["volumes"]:
        path = (volume.get("hostPath") or {}).get("path")
        if path is not None:
            found += [("spec.agent.socketDir", p) for p in _path_problems(path, absolute=True)]
    for container in pod["containers"]:
        found += _container(container)
    return found


def _container(container: Manifest) -> list[Problem]:
    found = [("spec.agent.resources", p) for p in api_rules.resource_requirements(container["resources"])]
    image = container["image"]
    if not image or image != image.strip():
        found.append(("spec.agent.image", f"image {image!r} is empty or has surrounding whitespace"))
    found += [
        ("spec.agent", f"env name {e['name']!r}") for e in container["env"] if not ENV_NAME.match(e["name"])
    ]
    for mount in container["volumeMounts"]:
        found += [("spec.agent.socketDir", p) for p in _path_problems(mount["mountPath"], absolute=True)]
        if "subPath" in mount:
            found += [("spec.storage.subPath", p) for p in _path_problems(mount["subPath"], absolute=False)]
    return found


def _path_problems(path: str, *, absolute: bool) -> Iterable[str]:
    if "\x00" in path:
        yield f"path {path!r} contains a NUL byte"
    if path.startswith("/") != absolute:
        yield f"path {path!r} must be {'absolute' if absolute else 'relative'}"
    if ".." in path.split("/"):
        yield f"path {path!r} must not contain '..'"


_CHECKS: Final[dict[str, Callable[[Manifest], list[Problem]]]] = {
    "PersistentVolumeClaim": _claim,
    "ConfigMap": _config_map,
    "DaemonSet": _daemon_set,
}
