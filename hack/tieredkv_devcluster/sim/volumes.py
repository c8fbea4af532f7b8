"""Pure mapping of a pod's volumes to local directories or files, and of volumeMounts to bind mounts.

hostPath volumes live under the node's own directory (two simulated nodes never share a hostPath);
PVC volumes resolve to their bound PV's directory: a hostPath PV's one local directory (shared by every
node: one machine, so RWX holds trivially), or for a `glusterfs` PV (`path: <volume>/<dir>`) that
directory through the pod's node's own FUSE client, `<state>/nodes/<node>/gluster/<volume>/<dir>`;
emptyDir, Secret, ConfigMap, downwardAPI and projected volumes get a per-pod directory whose file
contents are returned for the caller to write; an inline `csi` volume is the node's kubelet path where its
driver publishes it (the pod runner calls NodePublishVolume first).
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

from tieredkv_devcluster.sim.csi import target_path as csi_target_path
from tieredkv_devcluster.sim.plan import Lookup, Mount, Obj, PlanError, PodDirs, field_ref, source_data

_FILE_TYPES = {"File", "FileOrCreate", "Socket", "CharDevice", "BlockDevice"}


def host_path(dirs: PodDirs, path: str) -> Path:
    """Where hostPath `path` of this pod's node lives locally."""
    return host_path_under(dirs.node_root, path)


def host_path_under(node_root: Path, path: str) -> Path:
    """Where the node path `path` lives locally, for the node whose root directory is `node_root`."""
    norm = posixpath.normpath("/" + path).lstrip("/")
    return node_root / norm


def _projected_files(pod: Obj, lookup: Lookup, sources: list[Obj]) -> dict[str, bytes]:
    ns = pod["metadata"]["namespace"]
    files: dict[str, bytes] = {}
    for src in sources:
        for kind in ("secret", "configMap"):
            if kind not in src:
                continue
            ref = src[kind]
            data = source_data(lookup, ns, kind, ref["name"], bool(ref.get("optional"))) or {}
            items = ref.get("items")
            if items:
                for it in items:
                    if it["key"] not in data:
                        raise PlanError("ContainerCreating", f"key {it['key']} not in {kind} {ref['name']}")
                    files[it["path"]] = data[it["key"]]
            else:
                files.update(data)
        if "downwardAPI" in src:
            for it in src["downwardAPI"].get("items") or []:
                if "fieldRef" in it:
                    files[it["path"]] = field_ref(pod, it["fieldRef"]["fieldPath"]).encode()
        if "serviceAccountToken" in src:
            raise PlanError("UnsupportedVolume", "projected serviceAccountToken is not emulated")
    return files


def volume_sources(pod: Obj, lookup: Lookup, dirs: PodDirs) -> dict[str, Path]:
    """Local path of every volume of the pod; fills `dirs.files` with content to materialise."""
    ns = pod["metadata"]["namespace"]
    out: dict[str, Path] = {}
    for vol in pod["spec"].get("volumes") or []:
        name = vol["name"]
        own = dirs.pod_root / "volumes" / name
        if "hostPath" in vol:
            out[name] = host_path(dirs, vol["hostPath"]["path"])
        elif "persistentVolumeClaim" in vol:
            out[name] = _pvc_path(lookup, ns, vol["persistentVolumeClaim"]["claimName"], dirs)
        elif "emptyDir" in vol:
            out[name] = own
        elif "secret" in vol or "configMap" in vol:
            kind = "secret" if "secret" in vol else "configMap"
            ref = dict(vol[kind])
            ref["name"] = ref.get("secretName") or ref.get("name")
            dirs.files[name] = _projected_files(pod, lookup, [{kind: ref}])
            out[name] = own
        elif "downwardAPI" in vol:
            dirs.files[name] = _projected_files(pod, lookup, [{"downwardAPI": vol["downwardAPI"]}])
            out[name] = own
        elif "csi" in vol:
            # Published by the volume's CSI driver before the containers start (sim/csi.py).
            out[name] = host_path(dirs, csi_target_path(pod["metadata"]["uid"], name))
        elif "projected" in vol:
            dirs.files[name] = _projected_files(pod, lookup, vol["projected"].get("sources") or [])
            out[name] = own
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise PlanError("UnsupportedVolume", f"volume {name}: type {kinds} is not emulated")
    return out


def _pvc_path(lookup: Lookup, ns: str, claim: str, dirs: PodDirs) -> Path:
    pvc = lookup.pvc(ns, claim)
    if pvc is None:
        raise PlanError("ContainerCreating", f"persistentvolumeclaim {claim!r} not found")
    pv_name = (pvc.get("spec") or {}).get("volumeName")
    if not pv_name or (pvc.get("status") or {}).get("phase") != "Bound":
        raise PlanError("ContainerCreating", f"persistentvolumeclaim {claim!r} is not bound yet")
    spec = (lookup.pv(pv_name) or {}).get("spec") or {}
    if "glusterfs" in spec:
        return gluster_path(dirs.node_root.parent, spec["glusterfs"]["path"])
    path = spec.get("hostPath", {}).get("path")
    if not path:
        raise PlanError("UnsupportedVolume", f"PV {pv_name} is neither a hostPath nor a glusterfs volume")
    return Path(path)


def gluster_path(node_dir: Path, volume_path: str) -> Path:
    """`<volume>/<dir>` of a glusterfs PV through the client of the node whose directory is `node_dir`."""
    norm = posixpath.normpath("/" + volume_path).lstrip("/")
    if not norm or norm == ".":
        raise PlanError("UnsupportedVolume", f"glusterfs path {volume_path!r} names no volume")
    return node_dir / "gluster" / norm


def container_mounts(pod: Obj, container: Obj, sources: dict[str, Path]) -> list[Mount]:
    """volumeMounts as bind mounts (subPath resolved inside the volume, never outside it).

    A `csi` volume with `readOnly: true` is mounted read-only in every container whatever the volumeMount
    says, as the kubelet does (its volume's mounter reports ReadOnly); a bind mount never inherits the
    read-only flag of the driver's own mount, so this is what keeps the container from writing there.
    """
    forced_ro = {v["name"] for v in pod["spec"].get("volumes") or [] if (v.get("csi") or {}).get("readOnly")}
    mounts = []
    for vm in container.get("volumeMounts") or []:
        if vm["name"] not in sources:
            raise PlanError("CreateContainerConfigError", f"volumeMount {vm['name']} names no volume")
        src = sources[vm["name"]]
        sub = vm.get("subPath")
        if sub:
            norm = posixpath.normpath(sub)
            if norm.startswith("..") or norm.startswith("/"):
                raise PlanError("CreateContainerConfigError", f"subPath {sub!r} leaves the volume")
            src = src / norm
        mounts.append(
            Mount(
                source=str(src),
                target=vm["mountPath"],
                read_only=bool(vm.get("readOnly")) or vm["name"] in forced_ro,
                bidirectional=vm.get("mountPropagation") == "Bidirectional",
            )
        )
    return mounts


def host_path_kind(pod: Obj, volume_name: str) -> str:
    """The hostPath `type` of a volume ('' when unset)."""
    for vol in pod["spec"].get("volumes") or []:
        if vol["name"] == volume_name and "hostPath" in vol:
            kind: Any = vol["hostPath"].get("type", "")
            return str(kind)
    return ""


def is_file_type(kind: str) -> bool:
    return kind in _FILE_TYPES
