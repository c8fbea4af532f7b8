"""Builders of the agents' ServiceAccount, Role and RoleBinding: only what an agent uses (pure).

An agent takes part in the GC-leader election (one Lease) and reports into its cache's status; it reads
nothing else from the API. Rules naming `resourceNames` cannot cover `create`, so creating the Lease is
granted without a name (a Lease of another name grants nothing).
"""

from __future__ import annotations

from typing import Any

from tieredkv_operator import names
from tieredkv_operator.names import CacheRef
from tieredkv_operator.spec import GROUP, PLURAL

Manifest = dict[str, Any]


def _meta(cache: CacheRef) -> Manifest:
    return {
        "name": names.agent_name(cache.name),
        "namespace": cache.namespace,
        "labels": names.labels(cache.name, "agent"),
        "ownerReferences": [cache.owner_reference()],
    }


def service_account(cache: CacheRef) -> Manifest:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(cache)}


def role(cache: CacheRef) -> Manifest:
    lease, own = [names.gc_lease_name(cache.name)], [cache.name]
    rules = [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": lease,
            "verbs": ["get", "update", "patch"],
        },
        {"apiGroups": [GROUP], "resources": [PLURAL], "resourceNames": own, "verbs": ["get"]},
        {
            "apiGroups": [GROUP],
            "resources": [f"{PLURAL}/status"],
            "resourceNames": own,
            "verbs": ["get", "patch"],
        },
    ]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(cache),
        "rules": rules,
    }


def role_binding(cache: CacheRef) -> Manifest:
    name = names.agent_name(cache.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(cache),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": cache.namespace}],
    }
