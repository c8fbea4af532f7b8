"""Settings of the CSI node plugin process (`tieredkv-agent csi`), from TIEREDKV_CSI_* variables.

Paths are as the plugin's container sees them. The chart mounts the node's socket root and the kubelet's pods
directory at the same paths inside the container as on the node, so the bind source and the target path the
kubelet sends need no translation.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CsiSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TIEREDKV_CSI_", extra="forbid", use_attribute_docstrings=True
    )

    driver_name: str = "socket.tieredkv.io"
    """The CSI driver name: the CSIDriver object's, and the `driver` of the volumes the webhook injects."""
    node_name: str = ""
    """The node this plugin runs on (downward API); answered as the node ID in NodeGetInfo."""
    csi_socket: Path = Path("/csi/csi.sock")
    """Where the plugin serves the CSI Identity and Node services (a hostPath directory of the kubelet's)."""
    csi_endpoint: Path = Path("/var/lib/kubelet/plugins/socket.tieredkv.io/csi.sock")
    """The CSI socket's path on the node, which the kubelet dials: told to the kubelet at registration."""
    registration_socket: Path = Path("/registration/socket.tieredkv.io-reg.sock")
    """The plugin registration socket, in the kubelet's plugins_registry directory (which it watches)."""
    socket_root: Path = Path("/var/run/tieredkv")
    """The agents' socket root (spec.agent.socketDir): each cache's is `<root>/<namespace>.<name>`."""
    pods_dir: Path = Path("/var/lib/kubelet/pods")
    """The kubelet's pods directory; every target path the kubelet sends lies below it."""

    @field_validator("csi_socket", "csi_endpoint", "registration_socket", "socket_root", "pods_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"{value} is not an absolute path")
        return value
