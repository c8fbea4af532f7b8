"""The kubelet's side of CSI for the node simulator: plugin registration, NodePublish/NodeUnpublish.

What a kubelet does, emulated over the real gRPC APIs (the agent's generated modules):
- plugin watcher: every Unix socket in `<kubelet>/plugins_registry` is a plugin's registration socket; the
  kubelet calls Registration.GetInfo, accepts a "CSIPlugin" that serves a 1.x CSI version, dials the
  endpoint it names, calls Node.NodeGetInfo, and answers Registration.NotifyRegistrationStatus;
- for a pod's inline `csi` volume: refuses it unless a CSIDriver object for the driver lists the Ephemeral
  lifecycle mode; makes `<kubelet>/pods/<uid>/volumes/kubernetes.io~csi/<volume>` and calls
  Node.NodePublishVolume with target `.../mount`, volume id `csi-<sha256(uid + volume)>`, a mount
  capability, and the volume's attributes plus the pod's (podInfoOnMount) and `ephemeral: "true"`;
- at pod teardown, Node.NodeUnpublishVolume, then removes the volume directory.

Paths sent over gRPC are the node's (`/var/lib/kubelet/...`), as a real kubelet sends them; `NodePaths` maps
them to the simulated node's directory on this machine. Called from pod runner threads.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tieredkv_agent.csi.proto import (
    csi_pb2,
    csi_pb2_grpc,
    pluginregistration_pb2,
    pluginregistration_pb2_grpc,
)

log = logging.getLogger("sim.csi")

KUBELET_DIR = "/var/lib/kubelet"
RPC_TIMEOUT_S = 10.0

Obj = dict[str, Any]


class CsiError(Exception):
    """A CSI step failed; the pod stays ContainerCreating and the kubelet retries."""


@dataclass
class NodePaths:
    """The node's filesystem as this machine holds it: node path -> local path."""

    to_local: Callable[[str], Path]
    short_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tkv-csi-")))
    """Short symlinks to sockets whose local paths pass AF_UNIX's 107-byte limit."""

    def dial_path(self, node_path: str) -> str:
        local = self.to_local(node_path)
        if len(str(local)) < 100:
            return str(local)
        link = self.short_dir / hashlib.sha256(str(local).encode()).hexdigest()[:12]
        if not link.is_symlink():
            link.symlink_to(local)
        return str(link)


@dataclass
class Plugin:
    name: str
    endpoint: str
    node_id: str
    channel: grpc.Channel

    def node(self) -> Any:
        return csi_pb2_grpc.NodeStub(self.channel)  # type: ignore[no-untyped-call]


def volume_handle(pod_uid: str, volume: str) -> str:
    """The kubelet's volume id for an inline ephemeral volume: csi-<sha256 of pod uid + volume name>."""
    return "csi-" + hashlib.sha256((pod_uid + volume).encode()).hexdigest()


def target_path(pod_uid: str, volume: str, kubelet_dir: str = KUBELET_DIR) -> str:
    """Where the kubelet publishes a pod's csi volume, as a node path."""
    return f"{kubelet_dir}/pods/{pod_uid}/volumes/kubernetes.io~csi/{volume}/mount"


def publish_context(pod: Obj, attributes: dict[str, str]) -> dict[str, str]:
    """volumeAttributes plus what a kubelet adds for a podInfoOnMount driver's ephemeral volume."""
    meta, spec = pod["metadata"], pod["spec"]
    return {
        **attributes,
        "csi.storage.k8s.io/pod.name": meta["name"],
        "csi.storage.k8s.io/pod.namespace": meta["namespace"],
        "csi.storage.k8s.io/pod.uid": meta["uid"],
        "csi.storage.k8s.io/serviceAccount.name": spec.get("serviceAccountName") or "default",
        "csi.storage.k8s.io/ephemeral": "true",
    }


class Kubelet:
    """One simulated node's CSI volume manager: its registered plugins, its publishes (runner threads)."""

    def __init__(
        self,
        node: str,
        paths: NodePaths,
        driver_modes: Callable[[str], list[str] | None],
        kubelet_dir: str = KUBELET_DIR,
    ) -> None:
        self.node, self.paths, self.driver_modes, self.dir = node, paths, driver_modes, kubelet_dir
        self.plugins: dict[str, Plugin] = {}
        self._lock = threading.Lock()

    def discover(self) -> list[str]:
        """Register every plugin whose socket is in plugins_registry and is not registered yet."""
        registry = self.paths.to_local(f"{self.dir}/plugins_registry")
        found = []
        for sock in sorted(registry.glob("*.sock")) if registry.is_dir() else []:
            if not sock.is_socket():
                continue
            try:
                name = self._register(f"{self.dir}/plugins_registry/{sock.name}")
            except (grpc.RpcError, CsiError) as exc:
                log.warning("%s: plugin %s not registered: %s", self.node, sock.name, exc)
                continue
            found.append(name)
        return found

    def _register(self, reg_socket: str) -> str:
        with grpc.insecure_channel(f"unix:{self.paths.dial_path(reg_socket)}") as channel:
            reg = pluginregistration_pb2_grpc.RegistrationStub(channel)  # type: ignore[no-untyped-call]
            info = reg.GetInfo(pluginregistration_pb2.InfoRequest(), timeout=RPC_TIMEOUT_S)
            error = ""
            if info.type != "CSIPlugin":
                error = f"plugin type {info.type!r} is not CSIPlugin"
            elif not any(v.split(".")[0] == "1" for v in info.supported_versions):
                error = f"no supported CSI version in {list(info.supported_versions)}"
            plugin = None
            if not error:
                try:
                    plugin = self._dial(info.name, info.endpoint or reg_socket)
                except grpc.RpcError as exc:
                    error = f"NodeGetInfo on {info.endpoint}: {exc.code().name}"
            reg.NotifyRegistrationStatus(
                pluginregistration_pb2.RegistrationStatus(plugin_registered=not error, error=error),
                timeout=RPC_TIMEOUT_S,
            )
        if error or plugin is None:
            raise CsiError(error)
        with self._lock:
            old = self.plugins.pop(plugin.name, None)
            self.plugins[plugin.name] = plugin
        if old is not None:
            old.channel.close()
        log.info(
            "%s registered CSI driver %s at %s (node id %s)",
            self.node,
            info.name,
            plugin.endpoint,
            plugin.node_id,
        )
        name: str = info.name
        return name

    def _dial(self, name: str, endpoint: str) -> Plugin:
        channel = grpc.insecure_channel(f"unix:{self.paths.dial_path(endpoint)}")
        try:
            stub = csi_pb2_grpc.NodeStub(channel)  # type: ignore[no-untyped-call]
            node_id = stub.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=RPC_TIMEOUT_S).node_id
        except grpc.RpcError:
            channel.close()
            raise
        return Plugin(name=name, endpoint=endpoint, node_id=node_id, channel=channel)

    def _plugin(self, driver: str) -> Plugin:
        with self._lock:
            plugin = self.plugins.get(driver)
        if plugin is None:
            self.discover()
            with self._lock:
                plugin = self.plugins.get(driver)
        if plugin is None:
            raise CsiError(f"driver name {driver} not found in the list of registered CSI drivers")
        return plugin

    def publish(self, pod: Obj, volume: Obj) -> Path:
        """NodePublishVolume for one inline csi volume of `pod`; the local path of the published target."""
        source, uid = volume["csi"], pod["metadata"]["uid"]
        driver = source["driver"]
        modes = self.driver_modes(driver)
        if modes is None:
            raise CsiError(f"CSIDriver {driver} not found: an inline csi volume needs one")
        if "Ephemeral" not in modes:
            raise CsiError(f"CSIDriver {driver} does not list the Ephemeral volume lifecycle mode")
        target = target_path(uid, volume["name"], self.dir)
        self.paths.to_local(target).parent.mkdir(parents=True, exist_ok=True)
        capability = csi_pb2.VolumeCapability(
            mount=csi_pb2.VolumeCapability.MountVolume(fs_type=source.get("fsType", "")),
            access_mode=csi_pb2.VolumeCapability.AccessMode(
                mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
            ),
        )
        request = csi_pb2.NodePublishVolumeRequest(
            volume_id=volume_handle(uid, volume["name"]),
            target_path=target,
            volume_capability=capability,
            readonly=bool(source.get("readOnly")),
            volume_context=publish_context(pod, dict(source.get("volumeAttributes") or {})),
        )
        try:
            self._plugin(driver).node().NodePublishVolume(request, timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as exc:
            self._forget_if_gone(driver, exc)
            raise CsiError(f"NodePublishVolume: {exc.code().name}: {exc.details()}") from exc
        return self.paths.to_local(target)

    def unpublish(self, pod: Obj, volume: Obj) -> None:
        """NodeUnpublishVolume, then remove the volume's directory (as the kubelet's teardown does)."""
        uid = pod["metadata"]["uid"]
        target = target_path(uid, volume["name"], self.dir)
        request = csi_pb2.NodeUnpublishVolumeRequest(
            volume_id=volume_handle(uid, volume["name"]), target_path=target
        )
        try:
            self._plugin(volume["csi"]["driver"]).node().NodeUnpublishVolume(request, timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as exc:
            self._forget_if_gone(volume["csi"]["driver"], exc)
            raise CsiError(f"NodeUnpublishVolume: {exc.code().name}: {exc.details()}") from exc
        volume_dir = self.paths.to_local(target).parent
        if volume_dir.is_dir():
            volume_dir.rmdir()

    def _forget_if_gone(self, driver: str, exc: grpc.RpcError) -> None:
        """A plugin that stopped answering is registered again from its socket on the next call."""
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            with self._lock:
                plugin = self.plugins.pop(driver, None)
            if plugin is not None:
                plugin.channel.close()

    def close(self) -> None:
        with self._lock:
            plugins, self.plugins = list(self.plugins.values()), {}
        for plugin in plugins:
            plugin.channel.close()
