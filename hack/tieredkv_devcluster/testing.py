"""What the k8s-tier tests import: a session cluster, namespaces, waiting, and failure dumps.

By default a test session starts its own control plane in a temporary state directory and stops it at
the end (about 10 s). `TIEREDKV_TEST_STATE_DIR=dir` keeps and reuses one between runs. An existing
cluster is used only when the user opts in with `TIEREDKV_USE_EXISTING_CLUSTER=1` (and `KUBECONFIG`);
otherwise a `KUBECONFIG` already in the environment is ignored, never touched.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tieredkv_devcluster import controlplane, paths
from tieredkv_devcluster.paths import StateLayout

T = TypeVar("T")


@dataclass(frozen=True)
class TestCluster:
    kubeconfig: Path
    layout: StateLayout | None  # None for an opted-in existing cluster (no local state, no local pods)

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        cmd = [str(paths.tool_binary("kubectl") or "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
        if check and out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout


def use_existing() -> bool:
    return os.environ.get("TIEREDKV_USE_EXISTING_CLUSTER") == "1"


@contextmanager
def session_cluster(nodes: int = 2) -> Iterator[TestCluster]:
    """The cluster for one test session (see the module docstring for the three ways to get one)."""
    if use_existing():
        kubeconfig = Path(os.environ.get("KUBECONFIG", Path.home() / ".kube" / "config"))
        yield TestCluster(kubeconfig=kubeconfig, layout=None)
        return
    keep = os.environ.get("TIEREDKV_TEST_STATE_DIR")
    state = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="tieredkv-test-cluster-"))
    cluster = controlplane.up(state, nodes=nodes, log=lambda _m: None)
    try:
        yield TestCluster(kubeconfig=cluster.kubeconfig, layout=cluster.layout)
    finally:
        if not keep:
            controlplane.down(state, log=lambda _m: None)
            controlplane.remove_state(state)


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `predicate` until it returns something truthy; its last exception is in the timeout error."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else "")
    )


_DUMP_KINDS = "all,configmaps,secrets,pvc,serviceaccounts,roles,rolebindings,leases,events"


def dump_namespace(cluster: TestCluster, namespace: str, out_dir: Path) -> Path:
    """Write events, every object's YAML and the logs of processes into `out_dir` (for a failed test)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    objects = cluster.kubectl("get", _DUMP_KINDS, "-n", namespace, "-o", "yaml", check=False)
    (out_dir / "objects.yaml").write_text(_redact(objects))
    events = cluster.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False)
    (out_dir / "events.txt").write_text(events)
    cluster_scoped = cluster.kubectl("get", "nodes,pv,crd", "-o", "wide", check=False)
    (out_dir / "cluster.txt").write_text(cluster_scoped)
    if cluster.layout is not None:
        logs = out_dir / "logs"
        logs.mkdir(exist_ok=True)
        for log in cluster.layout.logs.glob("*.log"):
            (logs / log.name).write_text(_tail(log))
        for log in cluster.layout.pods.glob("*/logs/*.log"):
            (logs / f"pod-{log.parent.parent.name[:8]}-{log.name}").write_text(_tail(log))
    return out_dir


def _tail(path: Path, limit: int = 200_000) -> str:
    data = path.read_bytes()
    return data[-limit:].decode(errors="replace")


def _redact(objects_yaml: str) -> str:
    """Secret values never land in dumps."""
    try:
        doc: Any = yaml.safe_load(objects_yaml) or {}
    except yaml.YAMLError:
        return objects_yaml
    for item in doc.get("items") or []:
        if item.get("kind") == "Secret":
            item["data"] = {k: "<redacted>" for k in (item.get("data") or {})}
    return str(yaml.safe_dump(doc, sort_keys=False))
