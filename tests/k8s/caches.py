"""TieredKVCache manifests and waits shared by the operator's k8s-tier tests."""

from __future__ import annotations

import copy
from typing import Any

from kubernetes import client

from tieredkv_devcluster import testing

GROUP, VERSION, PLURAL = "tieredkv.io", "v1alpha1", "tieredkvcaches"


def manifest(name: str, **spec_overrides: Any) -> dict[str, Any]:
    """A small native-mode cache on the default StorageClass; top-level spec keys can be overridden."""
    spec: dict[str, Any] = {
        "storage": {"size": "1Gi"},
        "vllm": {
            "version": "0.33",
            "mode": "native",
            "cpuBytes": "1Gi",
            "selector": {"matchLabels": {"app": "vllm"}},
        },
    }
    spec.update(copy.deepcopy(spec_overrides))
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TieredKVCache",
        "metadata": {"name": name},
        "spec": spec,
    }


def get(api: client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name
    )
    return obj


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return {}


def wait_condition(
    api: client.ApiClient, ns: str, name: str, kind: str, status: str, *, timeout: float = 60
) -> dict[str, Any]:
    """Wait until condition `kind` has `status` for the current generation; return the object."""

    def check() -> dict[str, Any] | None:
        obj = get(api, ns, name)
        cond = condition(obj, kind)
        current = cond.get("observedGeneration") == obj["metadata"]["generation"]
        return obj if cond.get("status") == status and current else None

    return testing.wait_for(check, timeout, f"{kind}={status} on {ns}/{name}", interval=0.25)
