"""Pure checks of a NodePublishVolume / NodeUnpublishVolume request: what to mount where, or why not.

The kubelet sends, for an inline ephemeral `csi` volume, the pod's attributes
(`csi.storage.k8s.io/pod.name`, `.../pod.namespace`, `.../pod.uid`, `.../serviceAccount.name`,
`.../ephemeral: "true"`) merged with the volume's own `volumeAttributes`. A pod may ask only for the socket
directory of a cache in its own namespace: the directory is `<socket root>/<pod namespace>.<cache>`, named by
the plugin and never by the request, so no attribute can point the bind mount anywhere else on the node.
No I/O here: the servicer (node.py) does the mounting.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

import grpc

POD_NAME = "csi.storage.k8s.io/pod.name"
POD_NAMESPACE = "csi.storage.k8s.io/pod.namespace"
POD_UID = "csi.storage.k8s.io/pod.uid"
SERVICE_ACCOUNT = "csi.storage.k8s.io/serviceAccount.name"
EPHEMERAL = "csi.storage.k8s.io/ephemeral"
CACHE = "cache"
"""The one volumeAttribute a pod sets: the name of the TieredKVCache whose socket it wants."""
CACHE_NAMESPACE = "namespace"
"""Optional volumeAttribute: the cache's namespace; when given it must be the pod's own."""

KUBELET_ATTRIBUTES = frozenset({POD_NAME, POD_NAMESPACE, POD_UID, SERVICE_ACCOUNT, EPHEMERAL})
VOLUME_ATTRIBUTES = frozenset({CACHE, CACHE_NAMESPACE})

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_UID = re.compile(r"[0-9a-fA-F-]{1,64}")
_VOLUME_NAME = _DNS_LABEL


class RefusedError(Exception):
    """A request the plugin will not carry out; `code` is the gRPC status it answers with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Publish:
    """A checked publish: bind `source` (a cache's socket directory) read-only at `target`."""

    source: str
    target: str
    namespace: str
    cache: str
    pod: str


def check_publish(
    *,
    volume_id: str,
    target_path: str,
    context: dict[str, str],
    is_mount: bool,
    socket_root: str,
    pods_dir: str,
) -> Publish:
    """The bind mount a NodePublishVolumeRequest asks for, or `RefusedError` saying which rule it breaks."""
    if not volume_id:
        raise RefusedError(grpc.StatusCode.INVALID_ARGUMENT, "volume_id is empty")
    if not is_mount:
        raise RefusedError(
            grpc.StatusCode.INVALID_ARGUMENT, "only a mount volume capability is served, not block"
        )
    if context.get(EPHEMERAL) != "true":
        raise RefusedError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "only inline ephemeral volumes are served (no csi.storage.k8s.io/ephemeral=true in the context:"
            " is the CSIDriver object's volumeLifecycleModes Ephemeral and podInfoOnMount true?)",
        )
    unknown = sorted(set(context) - KUBELET_ATTRIBUTES - VOLUME_ATTRIBUTES)
    if unknown:
        raise RefusedError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"unknown volumeAttributes {unknown}; the volume takes only {sorted(VOLUME_ATTRIBUTES)}",
        )
    namespace, uid, cache = context.get(POD_NAMESPACE, ""), context.get(POD_UID, ""), context.get(CACHE, "")
    if not _DNS_LABEL.fullmatch(namespace):
        raise RefusedError(
            grpc.StatusCode.INVALID_ARGUMENT, f"pod namespace {namespace!r} is not a namespace name"
        )
    if not _UID.fullmatch(uid):
        raise RefusedError(grpc.StatusCode.INVALID_ARGUMENT, f"pod uid {uid!r} is not a pod UID")
    if not cache or not _DNS_SUBDOMAIN.fullmatch(cache) or ".." in cache:
        raise RefusedError(
            grpc.StatusCode.INVALID_ARGUMENT, f"volumeAttributes.cache {cache!r} is not a TieredKVCache name"
        )
    wanted_ns = context.get(CACHE_NAMESPACE, namespace)
    if wanted_ns != namespace:
        raise RefusedError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"pod in namespace {namespace!r} asked for cache {wanted_ns}/{cache}: a pod gets only the socket"
            " of a cache in its own namespace",
        )
    target = check_target(target_path, pods_dir, uid=uid)
    source = posixpath.join(socket_root, f"{namespace}.{cache}")
    return Publish(
        source=source, target=target, namespace=namespace, cache=cache, pod=context.get(POD_NAME, "")
    )


def check_target(target_path: str, pods_dir: str, *, uid: str | None = None) -> str:
    """`target_path` if it is `<pods_dir>/<uid>/volumes/kubernetes.io~csi/<volume>/mount`, else refused.

    That is the only place a kubelet publishes an ephemeral volume; with `uid` given, it must be that pod's.
    """
    if not target_path:
        raise RefusedError(grpc.StatusCode.INVALID_ARGUMENT, "target_path is empty")
    if (
        "\0" in target_path
        or posixpath.normpath(target_path) != target_path.rstrip("/")
        or "//" in target_path
    ):
        raise RefusedError(
            grpc.StatusCode.INVALID_ARGUMENT, f"target_path {target_path!r} is not a normal path"
        )
    target = target_path.rstrip("/")
    root = pods_dir.rstrip("/") + "/"
    parts = target[len(root) :].split("/") if target.startswith(root) else []
    if (
        len(parts) != 5
        or not _UID.fullmatch(parts[0])
        or parts[1:3] != ["volumes", "kubernetes.io~csi"]
        or not _VOLUME_NAME.fullmatch(parts[3])
        or parts[4] != "mount"
    ):
        raise RefusedError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"target_path {target_path!r} is not"
            f" <{pods_dir}>/<pod uid>/volumes/kubernetes.io~csi/<volume>/mount",
        )
    if uid is not None and parts[0] != uid:
        raise RefusedError(
            grpc.StatusCode.PERMISSION_DENIED, f"target_path {target_path!r} is not in pod {uid}'s directory"
        )
    return target
