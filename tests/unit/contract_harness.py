"""Real processes for the plugin contract tests: an agent configured as the operator configures it, and
stand-in engines given the kv-transfer-config the operator renders for their pods."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tieredkv_operator.names import CacheRef, socket_host_dir
from tieredkv_operator.resources.agents import agent_env
from tieredkv_operator.resources.vllm_configmap import rendered
from tieredkv_operator.spec import TieredKVCacheSpec

SEED = "4242"
WAIT_S = 20.0


def cache_spec(socket_dir: Path, **agent: Any) -> TieredKVCacheSpec:
    return TieredKVCacheSpec.model_validate(
        {
            "storage": {"size": "1Gi"},
            "vllm": {
                "version": "0.33",
                "mode": "agent",
                "cpuBytes": "1Gi",
                "selector": {"matchLabels": {"app": "engine"}},
            },
            "agent": {"socketDir": str(socket_dir), **agent},
        }
    )


@dataclass
class Cache:
    """One TieredKVCache as the operator renders it, with a volume directory standing in for the PVC."""

    ref: CacheRef
    spec: TieredKVCacheSpec
    volume: Path

    @property
    def kv_transfer_config(self) -> str:
        return rendered(self.ref, self.spec)[0]

    @property
    def socket_path(self) -> Path:
        return (
            Path(socket_host_dir(self.spec.agent.socket_dir, self.ref.namespace, self.ref.name))
            / "agent.sock"
        )

    def agent_environ(self) -> dict[str, str]:
        """The DaemonSet's plain env values, the seed its Secret holds, and the volume's local path."""
        env = {e["name"]: e["value"] for e in agent_env(self.ref, self.spec, None, "h") if "value" in e}
        env.update(
            PYTHONHASHSEED=SEED,
            TIEREDKV_STORE_DIR=str(self.volume),
            TIEREDKV_METRICS_PORT="0",
            TIEREDKV_GC_LEASE_NAME="",
        )
        return {**_clean_environ(), **env}


def make_cache(tmp_path: Path, **agent: Any) -> Cache:
    volume = tmp_path / "volume"
    volume.mkdir()
    return Cache(CacheRef("shared", "team", "uid-1", 1), cache_spec(tmp_path / "run", **agent), volume)


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TIEREDKV_") and k != "PYTHONHASHSEED"}


class AgentProcess:
    """`tieredkv-agent run` as a child process; `kill` is SIGKILL, `stop` is SIGTERM."""

    def __init__(self, cache: Cache, log: Path) -> None:
        self.cache = cache
        self.log_path = log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tieredkv_agent.cli", "run"],
            env=cache.agent_environ(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + WAIT_S
        while not cache.socket_path.is_socket():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not start:\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(WAIT_S)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def start_engine(
    cache: Cache, name: str, prompts: list[str], *, seed: str = SEED, block: int = 65536
) -> subprocess.Popen[str]:
    """A stand-in engine process with the config the operator renders and the seed the webhook injects."""
    env = {
        **_clean_environ(),
        "PYTHONHASHSEED": seed,
        "TIEREDKV_KV_TRANSFER_CONFIG": cache.kv_transfer_config,
    }
    args = [sys.executable, "-m", "tieredkv_agent.standin", "--engine-id", f"{name}-{os.getpid()}"]
    args += ["--block-bytes", str(block), "--chunks", "64", "--wait-agent-s", "10" if seed == SEED else "0.5"]
    for text in prompts:
        args += ["--prompt", text]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(engine: subprocess.Popen[str]) -> tuple[dict[str, Any], str]:
    """(the engine's summary line, its stderr); AssertionError if it failed."""
    out, err = engine.communicate(timeout=120)
    assert engine.returncode == 0, f"engine exited {engine.returncode}:\n{err}"
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return lines[-1], err
