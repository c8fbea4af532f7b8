"""The one module of the operator that talks to the Kubernetes API (besides kopf itself).

Objects travel as plain camelCase dicts. Writes use server-side apply with the fixed field manager
`tieredkv-operator`, so a re-apply of identical content changes nothing and fields others own are left
alone. Called from kopf's handler threads; the underlying ApiClient is thread-safe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tieredkv_operator.names import FIELD_MANAGER, SEED_FIELD_MANAGER

Obj = dict[str, Any]
__all__ = ["SEED_FIELD_MANAGER", "Kube", "KubeError", "shared"]

_PATHS: Final[dict[tuple[str, str], tuple[str, str]]] = {
    ("v1", "PersistentVolumeClaim"): ("api/v1", "persistentvolumeclaims"),
    ("v1", "Secret"): ("api/v1", "secrets"),
    ("v1", "ConfigMap"): ("api/v1", "configmaps"),
    ("v1", "ServiceAccount"): ("api/v1", "serviceaccounts"),
    ("v1", "Service"): ("api/v1", "services"),
    ("v1", "Pod"): ("api/v1", "pods"),
    ("apps/v1", "DaemonSet"): ("apis/apps/v1", "daemonsets"),
    ("rbac.authorization.k8s.io/v1", "Role"): ("apis/rbac.authorization.k8s.io/v1", "roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    ("tieredkv.io/v1alpha1", "TieredKVCache"): ("apis/tieredkv.io/v1alpha1", "tieredkvcaches"),
}


@dataclass
class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0 when no response came back)."""

    status: int
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"


def _path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    prefix, plural = _PATHS[(api_version, kind)]
    path = f"/{prefix}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


_shared: dict[str, Kube] = {}


def shared() -> Kube:
    """The process's one API client, from in-cluster config or else $KUBECONFIG (created on first use)."""
    if "kube" not in _shared:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        _shared["kube"] = Kube(client.ApiClient())
    return _shared["kube"]


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        try:
            request = self.api.param_serialize(
                method,
                path,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            resp = self.api.call_api(*request)
            raw = resp.read()
        except ApiException as exc:  # no response at all (connection refused, TLS, timeout)
            raise KubeError(int(exc.status or 0), str(exc.reason), str(exc)) from exc
        data: Obj = json.loads(raw) if raw else {}
        if not 200 <= resp.status < 300:
            raise KubeError(
                resp.status, str(data.get("reason") or resp.reason), str(data.get("message") or raw)
            )
        return data

    def apply(self, manifest: Obj) -> Obj:
        """Server-side apply `manifest` as FIELD_MANAGER (forcing ownership of the fields it sets)."""
        meta = manifest["metadata"]
        path = _path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        return self._call(
            "PATCH",
            path,
            body=manifest,
            content_type="application/apply-patch+yaml",
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        )

    def create(
        self, manifest: Obj, field_manager: str = FIELD_MANAGER, *, dry_run: bool = False
    ) -> Obj | None:
        """Create `manifest`; None if an object of that name exists already (it is left as it is)."""
        meta = manifest["metadata"]
        query = [("fieldManager", field_manager)] + ([("dryRun", "All")] if dry_run else [])
        try:
            return self._call(
                "POST",
                _path(manifest["apiVersion"], manifest["kind"], meta["namespace"]),
                body=manifest,
                query=query,
            )
        except KubeError as err:
            if err.status == 409:
                return None
            raise

    def replace(self, obj: Obj, *, dry_run: bool = False, field_manager: str = FIELD_MANAGER) -> Obj:
        """PUT `obj` (carrying the resourceVersion it was read at: a concurrent change is a 409)."""
        meta = obj["metadata"]
        query = [("fieldManager", field_manager)] + ([("dryRun", "All")] if dry_run else [])
        path = _path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        return self._call("PUT", path, body=obj, query=query)

    def merge_patch(self, api_version: str, kind: str, namespace: str, name: str, patch: Obj) -> Obj | None:
        """JSON merge-patch an existing object; None if it does not exist (a patch never creates one)."""
        try:
            return self._call(
                "PATCH",
                _path(api_version, kind, namespace, name),
                body=patch,
                content_type="application/merge-patch+json",
                query=[("fieldManager", FIELD_MANAGER)],
            )
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return self._call("GET", _path(api_version, kind, namespace, name))
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    def read(self, path: str) -> Obj | None:
        """GET any API path (an object or a list); None when it does not exist."""
        try:
            return self._call("GET", path)
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[Obj]:
        result = self._call(
            "GET", _path(api_version, kind, namespace), query=[("labelSelector", label_selector)]
        )
        items: list[Obj] = result.get("items") or []
        return items

    def post_event(self, regarding: Obj, kind: str, reason: str, message: str, component: str) -> None:
        """A core/v1 Event about `regarding` (an object with apiVersion, kind and metadata)."""
        meta = regarding["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": regarding["apiVersion"],
                "kind": regarding["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self._call("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=event)

    def patch_status(self, namespace: str, name: str, status: Obj) -> None:
        """Merge-patch a TieredKVCache's status subresource (lists such as conditions are replaced whole)."""
        path = _path("tieredkv.io/v1alpha1", "TieredKVCache", namespace, name) + "/status"
        self._call("PATCH", path, body={"status": status}, content_type="application/merge-patch+json")
