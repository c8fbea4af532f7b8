"""Run the real `tieredkv-operator` console script against the test cluster, as its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tieredkv_devcluster import paths, testing

SIM_ANNOTATIONS = {"sim.tieredkv.io/run": "local"}
"""Agent pods carry this so the node simulator runs them as real processes."""


class OperatorProcess:
    def __init__(self, kube: testing.TestCluster, namespace: str, log_dir: Path, **settings: Any) -> None:
        self.kube, self.namespace, self.log = kube, namespace, log_dir / f"operator-{namespace}.log"
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kube.kubeconfig),
            "TIEREDKV_OPERATOR_DRIFT_INTERVAL_SECONDS": "2",
            "TIEREDKV_OPERATOR_AGENT_POD_ANNOTATIONS": json.dumps(SIM_ANNOTATIONS),
            # this checkout's code, not whichever checkout the shared venv's editable install points at
            "PYTHONPATH": os.pathsep.join(
                [
                    *(str(paths.REPO_ROOT / d) for d in ("operator", "agent", "common")),
                    os.environ.get("PYTHONPATH", ""),
                ]
            ),
        }
        self.env.update({f"TIEREDKV_OPERATOR_{k.upper()}": str(v) for k, v in settings.items()})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = Path(sys.executable).parent / "tieredkv-operator"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(binary), "run", "--standalone", f"--namespace={self.namespace}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=paths.REPO_ROOT,
            )

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def tail(self, lines: int = 40) -> str:
        return (
            "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""
        )
