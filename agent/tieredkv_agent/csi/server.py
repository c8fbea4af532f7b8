"""Assembles the CSI node plugin process: two gRPC servers on Unix sockets, until told to stop.

`serve_csi` is called by the CLI's `csi` command on the main thread, which then waits on `stop`; gRPC's own
thread pools run the servicers. The CSI socket serves Identity and Node; the registration socket (in the
kubelet's plugins_registry directory) serves the kubelet's Registration service.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from tieredkv_agent.csi.node import Identity, Node, PluginConfig, Registration
from tieredkv_agent.csi.proto import csi_pb2_grpc, pluginregistration_pb2_grpc
from tieredkv_agent.csi.settings import CsiSettings

log = logging.getLogger("tieredkv_agent.csi")


@dataclass
class CsiPlugin:
    """The running plugin: its servers and servicers (tests read `node.published`)."""

    csi_server: grpc.Server
    registration_server: grpc.Server
    node: Node
    registration: Registration

    def stop(self, grace_s: float = 2.0) -> None:
        self.registration_server.stop(grace_s).wait()
        self.csi_server.stop(grace_s).wait()


def _listen(server: grpc.Server, path: Path) -> None:
    """Bind `server` to the Unix socket `path`, replacing a stale socket left by an earlier run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()
    if server.add_insecure_port(f"unix:{path}") == 0:
        raise OSError(f"cannot listen on {path}")


def start_plugin(settings: CsiSettings, version: str) -> CsiPlugin:
    """Start both servers; the CSI socket is up before the registration socket appears to the kubelet."""
    config = PluginConfig(
        driver=settings.driver_name,
        version=version,
        node_id=settings.node_name,
        socket_root=str(settings.socket_root),
        pods_dir=str(settings.pods_dir),
        endpoint=str(settings.csi_endpoint),
    )
    node, registration = Node(config), Registration(config)
    csi_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="csi"))
    csi_pb2_grpc.add_IdentityServicer_to_server(Identity(config), csi_server)  # type: ignore[no-untyped-call]
    csi_pb2_grpc.add_NodeServicer_to_server(node, csi_server)  # type: ignore[no-untyped-call]
    _listen(csi_server, settings.csi_socket)
    csi_server.start()
    settings.csi_socket.chmod(0o600)
    reg_server = grpc.server(futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="csi-reg"))
    pluginregistration_pb2_grpc.add_RegistrationServicer_to_server(  # type: ignore[no-untyped-call]
        registration, reg_server
    )
    _listen(reg_server, settings.registration_socket)
    reg_server.start()
    settings.registration_socket.chmod(0o600)
    log.info(
        "CSI driver %s on %s (node %s), registration socket %s",
        settings.driver_name,
        settings.csi_socket,
        settings.node_name,
        settings.registration_socket,
    )
    return CsiPlugin(csi_server, reg_server, node, registration)


def serve_csi(settings: CsiSettings, version: str, stop: threading.Event) -> None:
    """Run the plugin until `stop` is set; removes its sockets on the way out."""
    plugin = start_plugin(settings, version)
    try:
        stop.wait()
    finally:
        plugin.stop()
        for path in (settings.registration_socket, settings.csi_socket):
            path.unlink(missing_ok=True)
