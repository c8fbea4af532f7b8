"""The CSI Identity and Node services, and the kubelet's plugin Registration service, as gRPC servicers.

gRPC's worker threads call every method; one lock serialises publishes and unpublishes (they are rare: one
per pod start or stop on the node), so two calls for one target never interleave their mount steps.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf import wrappers_pb2

from tieredkv_agent.csi import mounts
from tieredkv_agent.csi.proto import (
    csi_pb2,
    csi_pb2_grpc,
    pluginregistration_pb2,
    pluginregistration_pb2_grpc,
)
from tieredkv_agent.csi.volume import RefusedError, check_publish, check_target

log = logging.getLogger("tieredkv_agent.csi")

CSI_VERSIONS = ["1.0.0"]


@dataclass
class PluginConfig:
    """What the services need to know, from the process's settings (passed down by the assembly)."""

    driver: str
    version: str
    node_id: str
    socket_root: str
    pods_dir: str
    endpoint: str
    """The CSI socket's path on the node, as the kubelet dials it (answered in GetInfo)."""


def _abort(context: grpc.ServicerContext, exc: RefusedError) -> NoReturn:
    log.warning("refused: %s", exc)
    context.abort(exc.code, str(exc))
    raise AssertionError("context.abort returns only by raising")  # pragma: no cover


class Identity(csi_pb2_grpc.IdentityServicer):
    def __init__(self, config: PluginConfig) -> None:
        self.config = config

    def GetPluginInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        return csi_pb2.GetPluginInfoResponse(name=self.config.driver, vendor_version=self.config.version)

    def GetPluginCapabilities(self, request: Any, context: grpc.ServicerContext) -> Any:
        return csi_pb2.GetPluginCapabilitiesResponse()  # a node-only plugin: no controller service

    def Probe(self, request: Any, context: grpc.ServicerContext) -> Any:
        ready = Path(self.config.socket_root).is_dir() and Path(self.config.pods_dir).is_dir()
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=ready))


@dataclass
class Published:
    """The bind mounts this process made and has not removed, by target path (for logs and tests)."""

    targets: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Node(csi_pb2_grpc.NodeServicer):
    def __init__(self, config: PluginConfig) -> None:
        self.config = config
        self.published = Published()

    def NodeGetInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        return csi_pb2.NodeGetInfoResponse(node_id=self.config.node_id)

    def NodeGetCapabilities(self, request: Any, context: grpc.ServicerContext) -> Any:
        return csi_pb2.NodeGetCapabilitiesResponse()  # no staging, stats or expansion

    def NodePublishVolume(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            plan = check_publish(
                volume_id=request.volume_id,
                target_path=request.target_path,
                context=dict(request.volume_context),
                is_mount=request.volume_capability.HasField("mount"),
                socket_root=self.config.socket_root,
                pods_dir=self.config.pods_dir,
            )
            with self.published.lock:
                self._bind(plan.source, plan.target)
                self.published.targets[plan.target] = plan.source
        except RefusedError as exc:
            _abort(context, exc)
        log.info("published %s/%s to pod %s at %s", plan.namespace, plan.cache, plan.pod, plan.target)
        return csi_pb2.NodePublishVolumeResponse()

    def _bind(self, source: str, target: str) -> None:
        """Create the cache's socket directory if need be and bind it read-only at `target` (idempotent)."""
        parent = Path(target).parent
        if not parent.is_dir() or os.path.realpath(parent) != str(parent):
            raise RefusedError(
                grpc.StatusCode.FAILED_PRECONDITION, f"{parent} is not a directory the kubelet made"
            )
        Path(source).mkdir(mode=0o755, parents=True, exist_ok=True)
        if mounts.is_mount_point(target):
            if mounts.same_directory(source, target):
                return
            raise RefusedError(grpc.StatusCode.ALREADY_EXISTS, f"{target} already holds another mount")
        path = Path(target)
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise RefusedError(grpc.StatusCode.FAILED_PRECONDITION, f"{target} exists and is no directory")
        path.mkdir(mode=0o755, exist_ok=True)
        try:
            mounts.bind_read_only(source, target)
        except OSError as exc:
            raise RefusedError(grpc.StatusCode.INTERNAL, f"cannot mount the socket directory: {exc}") from exc

    def NodeUnpublishVolume(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            if not request.volume_id:
                raise RefusedError(grpc.StatusCode.INVALID_ARGUMENT, "volume_id is empty")
            target = check_target(request.target_path, self.config.pods_dir)
            with self.published.lock:
                self._unbind(target)
                self.published.targets.pop(target, None)
        except RefusedError as exc:
            _abort(context, exc)
        log.info("unpublished %s", target)
        return csi_pb2.NodeUnpublishVolumeResponse()

    @staticmethod
    def _unbind(target: str) -> None:
        """Unmount `target` if mounted and remove the directory; a second call finds nothing to do."""
        try:
            if mounts.is_mount_point(target):
                mounts.unmount(target)
            if os.path.lexists(target):
                Path(target).rmdir()
        except OSError as exc:
            raise RefusedError(grpc.StatusCode.INTERNAL, f"cannot unpublish {target}: {exc}") from exc


class Registration(pluginregistration_pb2_grpc.RegistrationServicer):
    """The kubelet's plugin watcher calls GetInfo, then NotifyRegistrationStatus with the outcome."""

    def __init__(self, config: PluginConfig) -> None:
        self.config = config
        self.registered = threading.Event()
        self.error = ""

    def GetInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pluginregistration_pb2.PluginInfo(
            type="CSIPlugin",
            name=self.config.driver,
            endpoint=self.config.endpoint,
            supported_versions=CSI_VERSIONS,
        )

    def NotifyRegistrationStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.plugin_registered:
            log.info("the kubelet registered CSI driver %s", self.config.driver)
            self.error = ""
            self.registered.set()
        else:
            log.error("the kubelet refused CSI driver %s: %s", self.config.driver, request.error)
            self.error = request.error
        return pluginregistration_pb2.RegistrationStatusResponse()
