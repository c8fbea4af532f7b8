"""How the simulated kubelet lays out an inline csi volume: the node path it publishes at, what it sends the
driver, and the read-only container mount it makes of a readOnly csi volume."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tieredkv_devcluster.sim import csi, volumes
from tieredkv_devcluster.sim.plan import PodDirs

pytestmark = pytest.mark.unit

POD = {
    "metadata": {"name": "p", "namespace": "team", "uid": "1234-abcd"},
    "spec": {
        "volumes": [{"name": "sock", "csi": {"driver": "socket.tieredkv.io", "readOnly": True}}],
        "containers": [{"name": "c", "volumeMounts": [{"name": "sock", "mountPath": "/run/s"}]}],
    },
}


def test_a_csi_volume_is_the_kubelets_publish_path_on_the_pods_node(tmp_path: Path) -> None:
    dirs = PodDirs(pod_root=tmp_path / "pod", node_root=tmp_path / "node")
    sources = volumes.volume_sources(POD, None, dirs)  # type: ignore[arg-type]  # no lookups for csi
    assert (
        sources["sock"]
        == tmp_path / "node/var/lib/kubelet/pods/1234-abcd/volumes/kubernetes.io~csi/sock/mount"
    )


def test_a_read_only_csi_volume_is_mounted_read_only_even_when_the_volume_mount_does_not_say_so() -> None:
    (mount,) = volumes.container_mounts(POD, POD["spec"]["containers"][0], {"sock": Path("/x")})
    assert mount.read_only


def test_the_kubelet_sends_the_pods_identity_and_marks_the_volume_ephemeral() -> None:
    context = csi.publish_context(POD, {"cache": "c"})
    assert context == {
        "cache": "c",
        "csi.storage.k8s.io/pod.name": "p",
        "csi.storage.k8s.io/pod.namespace": "team",
        "csi.storage.k8s.io/pod.uid": "1234-abcd",
        "csi.storage.k8s.io/serviceAccount.name": "default",
        "csi.storage.k8s.io/ephemeral": "true",
    }
    assert csi.volume_handle("1234-abcd", "sock") == "csi-" + hashlib.sha256(b"1234-abcdsock").hexdigest()
