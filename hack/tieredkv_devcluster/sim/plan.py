"""Pure translation of a pod (as a camelCase dict) into local process plans: argv, env, bind mounts.

No API calls here: objects the pod refers to (Secrets, ConfigMaps, PVCs, PVs) come through `Lookup`,
which the simulator backs with the API server and unit tests back with dicts.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

Obj = dict[str, Any]


class PlanError(Exception):
    """The pod cannot be run locally yet or at all; `reason` becomes the container's waiting reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Lookup(Protocol):
    def secret(self, namespace: str, name: str) -> Obj | None: ...
    def config_map(self, namespace: str, name: str) -> Obj | None: ...
    def pvc(self, namespace: str, name: str) -> Obj | None: ...
    def pv(self, name: str) -> Obj | None: ...


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False
    bidirectional: bool = False
    """mountPropagation: Bidirectional: mounts the container makes below `target` reach the node."""


@dataclass
class ContainerPlan:
    name: str
    argv: list[str]
    env: dict[str, str]
    mounts: list[Mount]
    workdir: str | None = None


@dataclass
class PodDirs:
    """Where this pod's volumes live on the simulator's machine."""

    pod_root: Path  # <state>/pods/<uid>
    node_root: Path  # <state>/nodes/<node>/hostpath
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # volume -> relpath -> content


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names are replaced, `$$` escapes, unknown refs stay."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR_REF.sub(sub, text)


def field_ref(pod: Obj, path: str) -> str:
    """Value of a downward-API fieldRef such as `spec.nodeName` or `metadata.labels['app']`."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str(meta.get(m.group(1), {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
    }
    if path not in simple:
        raise PlanError("CreateContainerConfigError", f"unsupported fieldRef {path!r}")
    return str(simple[path] or "")


def _data(obj: Obj) -> dict[str, bytes]:
    """Secret or ConfigMap contents as bytes (Secret `data` is base64)."""
    out = {k: v.encode() for k, v in (obj.get("stringData") or {}).items()}
    if obj.get("kind") == "Secret" or "type" in obj:
        out.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
    else:
        out.update({k: v.encode() for k, v in (obj.get("data") or {}).items()})
        out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return out


def source_data(lookup: Lookup, ns: str, kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
    obj = lookup.secret(ns, name) if kind == "secret" else lookup.config_map(ns, name)
    if obj is None:
        if optional:
            return None
        raise PlanError("CreateContainerConfigError", f"{kind} {ns}/{name} not found")
    return _data(obj)


def container_env(pod: Obj, container: Obj, lookup: Lookup, base: dict[str, str]) -> dict[str, str]:
    """The process environment: `base`, then envFrom, then env (later entries may use $(earlier))."""
    ns = pod["metadata"]["namespace"]
    env = dict(base)
    for src in container.get("envFrom") or []:
        kind = "secret" if "secretRef" in src else "configMap"
        ref = src.get("secretRef") or src.get("configMapRef") or {}
        data = source_data(lookup, ns, kind, ref["name"], bool(ref.get("optional")))
        for k, v in (data or {}).items():
            env[src.get("prefix", "") + k] = v.decode()
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(item.get("value", ""), env)
            continue
        vf = item["valueFrom"]
        if "fieldRef" in vf:
            env[name] = field_ref(pod, vf["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
            kind = "secret" if "secretKeyRef" in vf else "configMap"
            ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
            data = source_data(lookup, ns, kind, ref["name"], bool(ref.get("optional")))
            if data is not None and ref["key"] in data:
                env[name] = data[ref["key"]].decode()
            elif not ref.get("optional"):
                raise PlanError(
                    "CreateContainerConfigError", f"key {ref['key']!r} not in {kind} {ref['name']}"
                )
        elif "resourceFieldRef" in vf:
            env[name] = "0"  # no cgroup limits are emulated
        else:
            raise PlanError("CreateContainerConfigError", f"unsupported valueFrom in env {name}")
    return env


def container_argv(container: Obj, env: dict[str, str]) -> list[str]:
    """command + args with $(VAR) expansion; without `command` there is no image entrypoint to run."""
    command = container.get("command")
    if not command:
        raise PlanError(
            "NoLocalCommand", f"container {container['name']} has no command (images are not run)"
        )
    return [expand(a, env) for a in [*command, *(container.get("args") or [])]]
