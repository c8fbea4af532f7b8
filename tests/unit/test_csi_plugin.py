"""The agent's CSI node plugin over real gRPC on Unix sockets, driven by the simulator's kubelet side: it
registers through the registration socket, bind-mounts a cache's socket directory read-only into the pod's
volume path, undoes it on unpublish, and answers hostile requests with clear gRPC codes and no mount."""

from __future__ import annotations

import errno
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tieredkv_agent.csi import mounts
from tieredkv_agent.csi.proto import csi_pb2, csi_pb2_grpc
from tieredkv_agent.csi.server import CsiPlugin, start_plugin
from tieredkv_agent.csi.settings import CsiSettings
from tieredkv_devcluster.sim import csi as kubelet_csi

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root (CAP_SYS_ADMIN)"),
]

DRIVER = "socket.tieredkv.io"


@dataclass
class Node:
    root: Path
    plugin: CsiPlugin
    kubelet: kubelet_csi.Kubelet
    stub: Any

    @property
    def kubelet_dir(self) -> str:
        return str(self.root / "kubelet")

    def socket_dir(self, namespace: str, cache: str) -> Path:
        return self.root / "run" / f"{namespace}.{cache}"


def _unmount_all_under(root: Path) -> None:
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        point = line.split(" ")[4]
        if point.startswith(str(root) + "/"):
            mounts.unmount(point)


@pytest.fixture
def node() -> Iterator[Node]:
    root = Path(tempfile.mkdtemp(prefix="tkv-csi-"))  # short: AF_UNIX paths stop at 107 bytes
    (root / "kubelet" / "pods").mkdir(parents=True)
    (root / "run").mkdir()
    settings = CsiSettings(
        node_name="node-a",
        csi_socket=root / "plugin" / "csi.sock",
        csi_endpoint=root / "plugin" / "csi.sock",
        registration_socket=root / "kubelet" / "plugins_registry" / f"{DRIVER}-reg.sock",
        socket_root=root / "run",
        pods_dir=root / "kubelet" / "pods",
    )
    plugin = start_plugin(settings, "9.9.9")
    modes = {DRIVER: ["Ephemeral"]}
    kubelet = kubelet_csi.Kubelet("node-a", kubelet_csi.NodePaths(Path), modes.get, str(root / "kubelet"))
    channel = grpc.insecure_channel(f"unix:{settings.csi_socket}")
    try:
        yield Node(root, plugin, kubelet, csi_pb2_grpc.NodeStub(channel))
    finally:
        channel.close()
        kubelet.close()
        plugin.stop(0)
        _unmount_all_under(root)


def _pod(namespace: str = "team-a", name: str = "vllm-0") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
        "spec": {"serviceAccountName": "vllm"},
    }


def _volume(**attributes: str) -> dict[str, Any]:
    return {
        "name": "tieredkv-socket",
        "csi": {"driver": DRIVER, "readOnly": True, "volumeAttributes": attributes or {"cache": "c"}},
    }


def test_the_kubelet_registers_the_plugin_through_its_registration_socket(node: Node) -> None:
    assert node.kubelet.discover() == [DRIVER]
    assert node.kubelet.plugins[DRIVER].node_id == "node-a"
    assert node.plugin.registration.registered.is_set()
    identity = csi_pb2_grpc.IdentityStub(node.kubelet.plugins[DRIVER].channel)
    info = identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
    assert (info.name, info.vendor_version) == (DRIVER, "9.9.9")
    assert identity.Probe(csi_pb2.ProbeRequest()).ready.value is True


def test_publish_binds_the_caches_socket_directory_read_only_and_unpublish_removes_it(node: Node) -> None:
    pod, volume = _pod(), _volume()
    node.socket_dir("team-a", "c").mkdir()
    (node.socket_dir("team-a", "c") / "agent.sock").write_text("stand-in for the agent's socket")
    target = node.kubelet.publish(pod, volume)
    assert mounts.is_mount_point(str(target))
    assert (target / "agent.sock").read_text() == "stand-in for the agent's socket"
    with pytest.raises(OSError) as err:
        (target / "planted").write_text("a pod must not write here")
    assert err.value.errno == errno.EROFS
    assert node.kubelet.publish(pod, volume) == target  # the kubelet retries: a second publish is a no-op
    node.kubelet.unpublish(pod, volume)
    assert not target.exists() and not target.parent.exists()
    assert node.plugin.node.published.targets == {}
    node.kubelet.unpublish(pod, volume)  # and so is a second unpublish


def test_publish_makes_the_socket_directory_when_the_agent_has_not_started_yet(node: Node) -> None:
    target = node.kubelet.publish(_pod(), _volume())
    (node.socket_dir("team-a", "c") / "agent.sock").write_text("later")
    assert (target / "agent.sock").read_text() == "later"


def test_a_driver_without_the_ephemeral_lifecycle_mode_gets_no_inline_volume(node: Node) -> None:
    kubelet = kubelet_csi.Kubelet(
        "node-a", node.kubelet.paths, {DRIVER: ["Persistent"]}.get, node.kubelet_dir
    )
    with pytest.raises(kubelet_csi.CsiError, match="Ephemeral"):
        kubelet.publish(_pod(), _volume())
    kubelet.close()


def _request(node: Node, pod: dict[str, Any], **changes: Any) -> Any:
    uid = pod["metadata"]["uid"]
    fields: dict[str, Any] = {
        "volume_id": kubelet_csi.volume_handle(uid, "v"),
        "target_path": kubelet_csi.target_path(uid, "v", node.kubelet_dir),
        "volume_capability": csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume()),
        "volume_context": kubelet_csi.publish_context(pod, {"cache": "c"}),
    }
    fields.update(changes)
    Path(fields["target_path"]).parent.mkdir(parents=True, exist_ok=True)
    return csi_pb2.NodePublishVolumeRequest(**fields)


def _context(pod: dict[str, Any], **changes: str) -> dict[str, str]:
    context = kubelet_csi.publish_context(pod, {"cache": "c"})
    context.update(changes)
    return {k: v for k, v in context.items() if v != "-"}


HOSTILE: list[tuple[str, dict[str, Any], grpc.StatusCode, str]] = [
    (
        "a persistent (non-ephemeral) volume",
        {"ctx": {"csi.storage.k8s.io/ephemeral": "-"}},
        grpc.StatusCode.INVALID_ARGUMENT,
        "ephemeral",
    ),
    (
        "another namespace's cache",
        {"ctx": {"namespace": "team-b"}},
        grpc.StatusCode.PERMISSION_DENIED,
        "own namespace",
    ),
    (
        "a cache name that climbs out",
        {"ctx": {"cache": "../../etc"}},
        grpc.StatusCode.INVALID_ARGUMENT,
        "TieredKVCache name",
    ),
    (
        "an attribute the volume does not take",
        {"ctx": {"path": "/etc"}},
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown volumeAttributes",
    ),
    ("no cache at all", {"ctx": {"cache": "-"}}, grpc.StatusCode.INVALID_ARGUMENT, "cache"),
    (
        "a target outside the kubelet's pods directory",
        {"target": "/tmp/elsewhere/mount"},
        grpc.StatusCode.INVALID_ARGUMENT,
        "not",
    ),
    (
        "a target with ..",
        {"target": "{pods}/{uid}/volumes/kubernetes.io~csi/v/../../../../x/mount"},
        grpc.StatusCode.INVALID_ARGUMENT,
        "normal path",
    ),
    (
        "another pod's directory",
        {"target": "{pods}/0000/volumes/kubernetes.io~csi/v/mount"},
        grpc.StatusCode.PERMISSION_DENIED,
        "pod",
    ),
    ("a block volume", {"block": True}, grpc.StatusCode.INVALID_ARGUMENT, "block"),
    ("an empty volume id", {"volume_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "volume_id"),
]


@pytest.mark.parametrize(("what", "change", "code", "says"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_publish_is_refused_with_a_clear_code_and_mounts_nothing(
    node: Node, what: str, change: dict[str, Any], code: grpc.StatusCode, says: str
) -> None:
    pod = _pod()
    changes: dict[str, Any] = {}
    if "ctx" in change:
        changes["volume_context"] = _context(pod, **change["ctx"])
    if "target" in change:
        pods = f"{node.kubelet_dir}/pods"
        changes["target_path"] = change["target"].format(pods=pods, uid=pod["metadata"]["uid"])
    if change.get("block"):
        changes["volume_capability"] = csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume())
    if "volume_id" in change:
        changes["volume_id"] = change["volume_id"]
    with pytest.raises(grpc.RpcError) as err:
        node.stub.NodePublishVolume(_request(node, pod, **changes))
    assert err.value.code() == code, err.value.details()
    assert says in err.value.details()
    assert node.plugin.node.published.targets == {}
    assert not any(str(node.root) in line for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_one_refused_request_does_not_disturb_another_pods_published_volume(node: Node) -> None:
    good = _pod(name="good")
    target = node.kubelet.publish(good, _volume())
    with pytest.raises(grpc.RpcError):
        node.stub.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(volume_id="x", target_path=str(target) + "/../../../..")
        )
    assert mounts.is_mount_point(str(target))
