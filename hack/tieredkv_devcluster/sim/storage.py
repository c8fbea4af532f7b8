"""A volume provisioner for the default StorageClass `tieredkv-local`.

Each pending claim of that class gets a PersistentVolume backed by a local directory, pre-bound to the
claim through `claimRef`; the real PV controller in kube-controller-manager completes the binding.
A Released volume with reclaim policy Delete is deleted with its directory. One thread runs `loop`.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tieredkv_devcluster.sim import PROVISIONER, STORAGE_CLASS

log = logging.getLogger("sim.storage")


def ensure_storage_class(storage: client.StorageV1Api) -> None:
    body = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
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


def _pv_body(pvc: client.V1PersistentVolumeClaim, path: Path, reclaim: str) -> dict[str, object]:
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
            "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta.namespace,
                "name": meta.name,
                "uid": meta.uid,
            },
        },
    }


def reconcile_once(core: client.CoreV1Api, volumes_dir: Path) -> None:
    pvs = core.list_persistent_volume().items
    claimed = {pv.spec.claim_ref.uid for pv in pvs if pv.spec.claim_ref is not None}
    for pvc in core.list_persistent_volume_claim_for_all_namespaces().items:
        if (
            pvc.spec.storage_class_name != STORAGE_CLASS
            or pvc.spec.volume_name
            or pvc.metadata.uid in claimed
            or pvc.metadata.deletion_timestamp
        ):
            continue
        path = volumes_dir / f"pvc-{pvc.metadata.uid}"
        path.mkdir(parents=True, exist_ok=True)
        try:
            core.create_persistent_volume(_pv_body(pvc, path, "Delete"))
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
            shutil.rmtree(pv.spec.host_path.path, ignore_errors=True)
            log.info("deleted released volume %s", pv.metadata.name)


def loop(core: client.CoreV1Api, volumes_dir: Path, stop: threading.Event, period: float = 0.5) -> None:
    while not stop.is_set():
        try:
            reconcile_once(core, volumes_dir)
        except Exception as exc:
            log.warning("provisioner pass failed: %s", exc)
        stop.wait(period)
