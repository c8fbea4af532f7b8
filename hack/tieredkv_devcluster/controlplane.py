"""Bring the local control plane up and down: etcd, kube-apiserver, controller-manager, scheduler and the
node simulator, all on 127.0.0.1, and (when enabled) a private GlusterFS server for the `tieredkv-gluster`
StorageClass; all recorded in <state>/cluster.json so `down` stops only those.

Called from the CLI (`python -m tieredkv_devcluster up|down|status`) and from the pytest session fixture.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tieredkv_devcluster import gluster, paths, pki, procs
from tieredkv_devcluster.gluster import GlusterInfo
from tieredkv_devcluster.paths import StateLayout

# Order matters: started in this order, stopped in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "node-simulator")


@dataclass
class Cluster:
    """A running (or recorded) local cluster."""

    layout: StateLayout
    ports: dict[str, int] = field(default_factory=dict)
    nodes: int = 2
    processes: list[procs.ProcessRecord] = field(default_factory=list)
    started_at: float = 0.0
    gluster: GlusterInfo | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.layout.kubeconfig

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    def save(self) -> None:
        data = {
            "ports": self.ports,
            "nodes": self.nodes,
            "started_at": self.started_at,
            "processes": [p.to_json() for p in self.processes],
            "gluster": self.gluster.to_json() if self.gluster else None,
        }
        self.layout.state_file.write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, layout: StateLayout) -> Cluster | None:
        try:
            data: dict[str, Any] = json.loads(layout.state_file.read_text())
        except (OSError, ValueError):
            return None
        return cls(
            layout=layout,
            ports={k: int(v) for k, v in data["ports"].items()},
            nodes=int(data.get("nodes", 2)),
            processes=[procs.ProcessRecord.from_json(p) for p in data["processes"]],
            started_at=float(data.get("started_at", 0.0)),
            gluster=GlusterInfo.from_json(data["gluster"]) if data.get("gluster") else None,
        )

    def running(self) -> list[str]:
        return [p.name for p in self.processes if p.alive()]

    def healthy(self) -> bool:
        expected = {p.name for p in self.processes} | set(COMPONENTS)
        return set(self.running()) == expected and apiserver_ready(self)

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of each live component (children of the simulator excluded)."""
        out: dict[str, int] = {}
        for p in self.processes:
            try:
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:") and p.alive():
                        out[p.name] = int(line.split()[1]) * 1024
            except OSError:
                continue
        return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(predicate: Callable[[], bool], timeout: float, what: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        dead = [p.name for p in cluster.processes if not p.alive()]
        if dead:
            raise RuntimeError(
                f"{', '.join(dead)} exited while waiting for {what}; logs in {cluster.layout.logs}"
            )
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; logs in {cluster.layout.logs}")


def apiserver_ready(cluster: Cluster) -> bool:
    token = (cluster.layout.pki / "admin.token").read_text().strip()
    ctx = ssl.create_default_context(cafile=str(cluster.layout.pki / "ca.crt"))
    req = urllib.request.Request(f"{cluster.server}/readyz", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
            return bool(resp.read() == b"ok")
    except OSError:
        return False


def check_binaries() -> Path:
    """The kube binaries directory, after checking each binary is there and is v1.20.2."""
    bindir = paths.kube_bin_dir()
    for name in paths.KUBE_BINARIES:
        binary = bindir / name
        if not binary.exists():
            raise FileNotFoundError(f"{binary} is missing: run hack/build-kube.sh (make kube) first")
        probe = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
        version = probe.stdout.strip()
        if version != f"Kubernetes {paths.KUBE_VERSION}":
            raise RuntimeError(f"{binary} reports {version!r}, want Kubernetes {paths.KUBE_VERSION}")
    return bindir


def _write_kubeconfig(cluster: Cluster, token: str) -> None:
    p = cluster.layout.pki
    cluster.kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: tieredkv-dev\n  cluster:\n    server: {cluster.server}\n"
        f"    certificate-authority: {p / 'ca.crt'}\n"
        f"users:\n- name: admin\n  user:\n    token: {token}\n"
        "contexts:\n- name: tieredkv-dev\n  context:\n    cluster: tieredkv-dev\n    user: admin\n"
        "current-context: tieredkv-dev\n"
    )
    cluster.kubeconfig.chmod(0o600)


def _argv(cluster: Cluster, name: str, bindir: Path) -> list[str]:
    """Command line of one component (all bound to 127.0.0.1)."""
    p, ports, kcfg = cluster.layout.pki, cluster.ports, cluster.kubeconfig
    if name == "etcd":
        ec, ep = ports["etcd_client"], ports["etcd_peer"]
        return [
            str(paths.etcd_binary()),
            "--name=tieredkv-dev",
            f"--data-dir={cluster.layout.etcd_data}",
            "--unsafe-no-fsync",
            "--log-level=warn",
            f"--listen-client-urls=http://127.0.0.1:{ec}",
            f"--advertise-client-urls=http://127.0.0.1:{ec}",
            f"--listen-peer-urls=http://127.0.0.1:{ep}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ep}",
            f"--initial-cluster=tieredkv-dev=http://127.0.0.1:{ep}",
        ]
    if name == "kube-apiserver":
        return [
            str(bindir / name),
            f"--etcd-servers=http://127.0.0.1:{ports['etcd_client']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}",
            "--insecure-port=0",
            f"--tls-cert-file={p}/apiserver.crt",
            f"--tls-private-key-file={p}/apiserver.key",
            f"--client-ca-file={p}/ca.crt",
            f"--token-auth-file={p}/tokens.csv",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p}/sa.pub",
            f"--service-account-signing-key-file={p}/sa.key",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            # `kubectl logs`: the simulated nodes' kubelet API listens on their InternalIP (127.0.0.1).
            "--kubelet-preferred-address-types=InternalIP",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
        ]
    common = [f"--kubeconfig={kcfg}", "--leader-elect=false", "--port=0", "--secure-port=0"]
    if name == "kube-controller-manager":
        # nodelifecycle would mark the simulated nodes NotReady for lack of kubelet heartbeats.
        return [
            str(bindir / name),
            *common,
            f"--service-account-private-key-file={p}/sa.key",
            f"--root-ca-file={p}/ca.crt",
            "--use-service-account-credentials=true",
            "--controllers=*,-nodelifecycle,-csrsigning",
        ]
    if name == "kube-scheduler":
        return [str(bindir / name), *common]
    return [
        sys.executable,
        "-m",
        "tieredkv_devcluster",
        f"--state-dir={cluster.layout.root}",
        "sim",
        f"--nodes={cluster.nodes}",
    ]


def _fresh_runtime_dirs(layout: StateLayout) -> None:
    """A cluster that is (re)started gets a fresh etcd and fresh volumes; the PKI is kept."""
    for d in (layout.etcd_data, layout.volumes, layout.nodes, layout.pods, layout.gluster):
        if d.exists():
            subprocess.run(["rm", "-rf", "--one-file-system", str(d)], check=False)
    layout.logs.mkdir(parents=True, exist_ok=True)


def gluster_wanted(explicit: bool | None = None) -> bool:
    """Whether a cluster runs GlusterFS: `explicit`, else $TIEREDKV_GLUSTER (1 or 0), else if installed
    (the programs and /dev/fuse)."""
    if explicit is not None:
        return explicit
    setting = os.environ.get("TIEREDKV_GLUSTER", "")
    if setting in ("0", "1"):
        return setting == "1"
    return not gluster.missing_binaries() and Path("/dev/fuse").exists()


def up(
    state_dir: Path | None = None,
    nodes: int = 2,
    log: Callable[[str], None] = print,
    with_gluster: bool | None = None,
) -> Cluster:
    """Start the cluster unless it already runs healthy in `state_dir` (idempotent).

    `with_gluster` (default: `gluster_wanted()`) adds the GlusterFS server behind `tieredkv-gluster`.
    """
    layout = StateLayout(state_dir or paths.default_state_dir())
    existing = Cluster.load(layout)
    if existing is not None and existing.healthy():
        log(f"cluster already running ({', '.join(existing.running())})")
        return existing
    if existing is not None:
        log("cluster partly running or stale: stopping what remains of it")
        down(layout.root, log=lambda _m: None)
    bindir = check_binaries()
    layout.root.mkdir(parents=True, exist_ok=True)
    token = pki.ensure_pki(layout.pki)
    _fresh_runtime_dirs(layout)
    cluster = Cluster(layout=layout, nodes=nodes, started_at=time.time())
    cluster.ports = {k: free_port() for k in ("etcd_client", "etcd_peer", "apiserver")}
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(paths.REPO_ROOT / "hack"), os.environ.get("PYTHONPATH", "")]),
    }
    try:
        if gluster_wanted(with_gluster):
            cluster.gluster, records = gluster.start_server(layout.gluster)
            cluster.processes += records
            cluster.save()
        for name in COMPONENTS:
            _proc, record = procs.spawn(
                name, _argv(cluster, name, bindir), layout.logs / f"{name}.log", env=env
            )
            cluster.processes.append(record)
            cluster.save()
            if name == "kube-apiserver":
                _wait(lambda: apiserver_ready(cluster), 90, "kube-apiserver /readyz", cluster)
                _write_kubeconfig(cluster, token)
        _wait(lambda: _sim_ready(layout), 90, "simulated nodes and default ServiceAccount", cluster)
    except BaseException:
        down(layout.root, log=lambda _m: None)
        raise
    log(f"cluster up in {time.time() - cluster.started_at:.1f}s; kubeconfig: {cluster.kubeconfig}")
    return cluster


def _sim_ready(layout: StateLayout) -> bool:
    """The simulator writes this marker once nodes are Ready and the default ServiceAccount exists."""
    return (layout.root / "sim.ready").exists()


def down(state_dir: Path | None = None, log: Callable[[str], None] = print) -> None:
    """Stop every process recorded in the state file (and the pods the simulator ran), by PID."""
    layout = StateLayout(state_dir or paths.default_state_dir())
    cluster = Cluster.load(layout)
    if cluster is None:
        log("no cluster recorded")
        return
    ours = [p for p in cluster.processes if not p.name.startswith("gluster")]
    for record in reversed(ours):
        procs.stop(record, group=record.name == "node-simulator")
    stop_leftover_pods(layout)
    if cluster.gluster is not None:  # after the pods: they may hold its mounts
        kept = [p for p in cluster.processes if p.name.startswith("gluster")]
        gluster.stop_server(cluster.gluster, kept, layout.root)
    stop_extras(layout)
    (layout.root / "sim.ready").unlink(missing_ok=True)
    layout.state_file.unlink(missing_ok=True)
    log("cluster stopped")


def stop_extras(layout: StateLayout) -> None:
    """Stop processes the demo started beside the cluster (Prometheus), recorded under extras/."""
    extras = layout.root / "extras"
    for rec_file in extras.glob("*.json") if extras.exists() else []:
        try:
            record = procs.ProcessRecord.from_json(json.loads(rec_file.read_text()))
        except (OSError, ValueError, KeyError):
            continue
        procs.stop(record, timeout=10)
        rec_file.unlink(missing_ok=True)


def stop_leftover_pods(layout: StateLayout) -> None:
    """Kill pod processes the simulator recorded but could not stop (e.g. it was SIGKILLed)."""
    for rec_file in layout.pods.glob("*/procs/*.json") if layout.pods.exists() else []:
        try:
            record = procs.ProcessRecord.from_json(json.loads(rec_file.read_text()))
        except (OSError, ValueError, KeyError):
            continue
        procs.stop(record, timeout=5, group=True)
        rec_file.unlink(missing_ok=True)


def status(state_dir: Path | None = None) -> dict[str, Any]:
    layout = StateLayout(state_dir or paths.default_state_dir())
    cluster = Cluster.load(layout)
    if cluster is None:
        return {"running": False, "state_dir": str(layout.root)}
    return {
        "running": cluster.healthy(),
        "state_dir": str(layout.root),
        "kubeconfig": str(cluster.kubeconfig),
        "server": cluster.server,
        "components": {p.name: ("running" if p.alive() else "stopped") for p in cluster.processes},
        "gluster": cluster.gluster.to_json() if cluster.gluster else None,
        "rss_mib": {k: round(v / 2**20, 1) for k, v in cluster.rss_bytes().items()},
        "tools": str(paths.tools_dir()),
    }


def remove_state(state_dir: Path) -> None:
    shutil.rmtree(state_dir, ignore_errors=True)
