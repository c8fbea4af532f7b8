"""A real agent process for the abuse tests: started with `tieredkv-agent run`, probed, stopped.

The agent runs in agent mode on a temp volume and socket directory, with its metrics on a free local
port; `AgentProcess.metric` reads one sample from the real endpoint, `rss_peak_mib` its VmHWM.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
START_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**settings: str) -> dict[str, str]:
    """The environment of a child: the repo's sources first, no inherited TIEREDKV_* but `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIEREDKV_")}
    paths = [str(REPO_ROOT), *(str(REPO_ROOT / d) for d in ("agent", "common")), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update({f"TIEREDKV_{name.upper()}": value for name, value in settings.items()})
    return env


class AgentProcess:
    """One `tieredkv-agent run` child; its stderr (the log) goes to `log_path`."""

    def __init__(self, root: Path, **settings: str) -> None:
        self.store = root / "store"
        self.socket_dir = root / "sock"
        self.socket_path = self.socket_dir / "agent.sock"
        self.log_path = root / f"agent-{time.monotonic_ns()}.log"
        self.port = free_port()
        self.store.mkdir(parents=True, exist_ok=True)
        base = {
            "mode": "agent",
            "store_dir": str(self.store),
            "socket_dir": str(self.socket_dir),
            "metrics_port": str(self.port),
            "pod_ip": "127.0.0.1",
        }
        argv = [sys.executable, "-m", "tieredkv_agent.cli", "run"]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=child_env(**{**base, **settings}), stdout=log, stderr=log
            )

    def wait_serving(self) -> None:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the agent exited with {self.proc.returncode}: {self.log()}")
            if self.socket_path.is_socket() and self._metrics_text() is not None:
                return
            time.sleep(0.05)
        raise AssertionError(f"the agent did not serve within {START_S} s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _metrics_text(self) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as reply:
                return str(reply.read().decode())
        except OSError:
            return None

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the agent's /metrics (0 when absent)."""
        text = self._metrics_text() or ""
        label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        wanted = f"{name}{{{label_text}}}" if labels else name
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            if _canonical(series) == wanted:
                return float(value)
        return 0.0

    def rss_peak_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        assert match is not None
        return int(match.group(1)) / 1024

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert match is not None
        return int(match.group(1)) / 1024

    def stop(self, timeout_s: float = 30.0) -> float:
        """SIGTERM and wait; the seconds it took (raises on timeout, after a SIGKILL)."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return time.monotonic() - started


def _canonical(series: str) -> str:
    """`name{b="2",a="1"}` with its labels sorted."""
    if "{" not in series:
        return series
    name, _, rest = series.partition("{")
    labels = sorted(part for part in rest.rstrip("}").split(",") if part)
    return f"{name}{{{','.join(labels)}}}"
