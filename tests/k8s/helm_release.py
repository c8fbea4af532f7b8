"""A release of charts/tieredkv in the test cluster, installed with the real helm binary and
ci/sim-values.yaml (the operator and its agents run as local processes through the node simulator)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tieredkv_devcluster import paths, testing
from tieredkv_devcluster.controlplane import free_port

CHART = paths.REPO_ROOT / "charts" / "tieredkv"


@dataclass
class Release:
    """One release: its namespace, the namespace its caches live in, and the loopback webhook port."""

    kube: testing.TestCluster
    namespace: str
    caches: str
    name: str = "tkv-helm"
    port: int = field(default_factory=free_port)
    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tieredkv-helm-home-")))

    @property
    def fullname(self) -> str:
        return f"{self.name}-tieredkv"

    def values(self, *extra: str) -> list[str]:
        """The sim scenario, made specific to this test: its port, its cache namespace only."""
        selector = {"matchLabels": {"tieredkv.io/helm-test": self.caches}}
        args = ["-f", str(CHART / "ci" / "sim-values.yaml")]
        args += ["--set", f"webhook.url=https://127.0.0.1:{self.port}", "--set", f"webhook.port={self.port}"]
        args += ["--set", f"rbac.secretNamespaces={{{self.caches}}}"]
        args += ["--set-json", f"webhook.namespaceSelector={json.dumps(selector)}"]
        for item in extra:
            args += ["--set", item]
        return args

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        cmd = [str(paths.tools_dir() / "helm"), f"--kubeconfig={self.kube.kubeconfig}", "-n", self.namespace]
        out = subprocess.run([*cmd, *args], capture_output=True, text=True, check=False, env=env)
        if check and out.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out

    def install(self, *extra: str, dry_run: bool = False) -> subprocess.CompletedProcess[str]:
        # --take-ownership: other tests of the session may have applied the same CRD with kubectl.
        mode = ["--dry-run=server"] if dry_run else ["--wait", "--timeout=150s"]
        return self.helm("install", self.name, str(CHART), "--take-ownership", *mode, *self.values(*extra))

    def upgrade(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.helm("upgrade", self.name, str(CHART), "--wait", "--timeout=150s", *self.values(*extra))

    def operator_pods(self) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=operator"
        out = self.kube.kubectl("get", "pods", "-n", self.namespace, "-l", selector, "-o", "json")
        pods: list[dict[str, Any]] = json.loads(out)["items"]
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def operator_log(self, lines: int = 60) -> str:
        """The operator's stdout/stderr, from the node simulator's per-pod log files."""
        if self.kube.layout is None:
            return ""
        logs = []
        for pod in self.operator_pods():
            path = self.kube.layout.pods / pod["metadata"]["uid"] / "logs" / "operator.log"
            if path.exists():
                logs.append("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(logs)
