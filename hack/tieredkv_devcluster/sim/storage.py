"""The volume provisioner of the StorageClasses `tieredkv-local` and `tieredkv-gluster`.

Each pending claim of one of them gets a PersistentVolume pre-bound to the claim through `claimRef`; the
real PV controller in kube-controller-manager completes the binding. `tieredkv-local`: a hostPath PV on a
local directory (every node sees the same directory). `tieredkv-gluster` (when the cluster runs GlusterFS):
a directory `pvc-<uid>` of the cluster's gluster volume, made through the first node's FUSE client, and a
`glusterfs` PV naming `<volume>/pvc-<uid>`; each node's pods reach it through that node's own client
(`sim.volumes`). The gluster class is the default one when it exists. A Released volume with reclaim
policy Delete is deleted with its directory. One thread runs `loop`.
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tieredkv_devcluster.sim import GLUSTER_ENDPOINTS, GLUSTER_STORAGE_CLASS, PROVISIONER, STORAGE_CLASS

log = logging.getLogger("sim.storage")
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"


@dataclass(frozen=True)
class Backends:
    """Where provisioned volumes live: local directories, and the gluster volume if the cluster has one."""

    volumes_dir: Path
    gluster_volume: str | None = None
    gluster_mount: Path | None = None
    """The volume's root through the first node's client: the provisioner makes and removes PV dirs here."""

    def classes(self) -> tuple[str, ...]:
        return (STORAGE_CLASS, GLUSTER_STORAGE_CLASS) if self.gluster_volume else (STORAGE_CLASS,)

    def source(self, storage_class: str, name: str) -> tuple[Path, dict[str, Any]]:
        """(the PV's directory as the provisioner sees it, the PV's volume source) of a new PV `name`."""
        if storage_class == GLUSTER_STORAGE_CLASS and self.gluster_mount is not None:
            volume_path = f"{self.gluster_volume}/{name}"
            return self.gluster_mount / name, {
                "glusterfs": {"endpoints": GLUSTER_ENDPOINTS, "path": volume_path}
            }
        local = self.volumes_dir / name
        return local, {"hostPath": {"path": str(local), "type": "DirectoryOrCreate"}}

    def local_dir(self, pv: client.V1PersistentVolume) -> Path | None:
        """The directory of one of our PVs, as the provisioner sees it (None if it cannot)."""
        if pv.spec.host_path is not None:
            return Path(str(pv.spec.host_path.path))
        if pv.spec.glusterfs is not None and self.gluster_mount is not None:
            return self.gluster_mount / str(pv.spec.glusterfs.path).partition("/")[2]
        return None


def ensure_storage_classes(storage: client.StorageV1Api, backends: Backends) -> None:
    """Create the classes; the last one (gluster when there is one) is the default."""
    classes = backends.classes()
    for name in classes:
        body = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": name,
                "annotations": {DEFAULT_CLASS: str(name == classes[-1]).lower()},
            },
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
            "allowVolumeExpansion": True,
        }
        try:
            storage.create_storage_class(body)
        except ApiException as exc:
            if exc.status != 409:
                raise


def _pv_body(pvc: client.V1PersistentVolumeClaim, source: dict[str, Any], reclaim: str) -> dict[str, object]:
    meta, spec = pvc.metadata, pvc.spec
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{meta.uid}",
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
            "labels": {"sim.tieredkv.io/volume": "true"},
        },
        "spec": {
            "capacity": {"storage": spec.resources.requests["storage"]},
            "accessModes": spec.access_modes,
            "persistentVolumeReclaimPolicy": reclaim,
            "storageClassName": spec.storage_class_name,
            "volumeMode": spec.volume_mode or "Filesystem",
            **source,
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta.namespace,
                "name": meta.name,
                "uid": meta.uid,
            },
        },
    }


def reconcile_once(core: client.CoreV1Api, backends: Backends) -> None:
    pvs = core.list_persistent_volume().items
    claimed = {pv.spec.claim_ref.uid for pv in pvs if pv.spec.claim_ref is not None}
    for pvc in core.list_persistent_volume_claim_for_all_namespaces().items:
        if (
            pvc.spec.storage_class_name not in backends.classes()
            or pvc.spec.volume_name
            or pvc.metadata.uid in claimed
            or pvc.metadata.deletion_timestamp
        ):
            continue
        path, source = backends.source(pvc.spec.storage_class_name, f"pvc-{pvc.metadata.uid}")
        path.mkdir(parents=True, exist_ok=True)
        try:
            core.create_persistent_volume(_pv_body(pvc, source, "Delete"))
            log.info("provisioned %s for %s/%s", path.name, pvc.metadata.namespace, pvc.metadata.name)
        except ApiException as exc:
            if exc.status != 409:
                raise
    for pv in pvs:
        ours = (pv.metadata.annotations or {}).get("pv.kubernetes.io/provisioned-by") == PROVISIONER
        if ours and pv.status.phase == "Released" and pv.spec.persistent_volume_reclaim_policy == "Delete":
            try:
                core.delete_persistent_volume(pv.metadata.name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
            if (directory := backends.local_dir(pv)) is not None:
                shutil.rmtree(directory, ignore_errors=True)
            log.info("deleted released volume %s", pv.metadata.name)


def loop(core: client.CoreV1Api, backends: Backends, stop: threading.Event, period: float = 0.5) -> None:
    while not stop.is_set():
        try:
            reconcile_once(core, backends)
        except Exception as exc:
            log.warning("provisioner pass failed: %s", exc)
        stop.wait(period)
