"""Agent mode with real engines: vLLM processes share prompt KV through `TieredKVTier` and a real agent.

The agent is `tieredkv-agent run` configured from the operator's DaemonSet env; each engine gets the
operator's rendered agent-mode `--kv-transfer-config` for `vllm.device: cpu` (tieredkv's CPU offloading
worker) as it is, and the cache's seed, as the webhook injects them. Mixed mode: a native-mode engine
(vLLM's own `fs` tier on the same volume) and an agent-mode engine read each other's blocks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.contract_harness import SEED, AgentProcess, Cache
from tests.vllm.conftest import BLOCK_SIZE, Runner, cache_spec, engine_result, native_kv_config
from tieredkv_devcluster.vllm_model import prompt_tokens
from tieredkv_operator.names import CacheRef

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1800)]

PROMPT_LEN = 512
SHARED, NATIVE_FIRST, AGENT_FIRST = (prompt_tokens(PROMPT_LEN, seed=s) for s in (11, 12, 13))
SERVE = [prompt_tokens(PROMPT_LEN, seed=s) for s in (21, 22, 23)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Cache:
    root = tmp_path_factory.mktemp("agent-cache")
    (root / "volume").mkdir()
    spec = cache_spec("agent", agent={"socketDir": str(root / "run")})
    return Cache(CacheRef("shared", "team", "uid-1", 1), spec, root / "volume")


@pytest.fixture(scope="module")
def agent(cache: Cache, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    started = AgentProcess(cache, tmp_path_factory.mktemp("agent-log") / "agent.log")
    yield started
    started.stop()


def agent_kv_config(cache: Cache) -> dict[str, Any]:
    """The operator's rendered agent-mode config for a CPU engine, as it is."""
    config: dict[str, Any] = json.loads(cache.kv_transfer_config)
    return config


def disk_tokens(prompt_result: dict[str, Any]) -> int:
    return int(prompt_result["cached_by_source"].get("disk", 0))


def settle(cache: Cache) -> list[str]:
    """Let the agent finish the stores an engine sent before it exited."""
    return ["--settle-dir", str(cache.volume)]


@pytest.fixture(scope="module")
def engine_a(
    agent: AgentProcess, cache: Cache, run_engine: Runner, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Agent mode, first: computes every prompt of this module and stores its blocks through the agent."""
    prompts = [SHARED, AGENT_FIRST, *SERVE]
    workdir = tmp_path_factory.mktemp("engine-a")
    return run_engine(workdir, prompts, agent_kv_config(cache), hash_seed=SEED, extra_args=settle(cache))


def test_a_second_agent_mode_engine_reports_the_shared_prompt_cached_from_disk_with_identical_output(
    engine_a: dict[str, Any], cache: Cache, run_engine: Runner, tmp_path: Path
) -> None:
    assert disk_tokens(engine_a["prompts"][0]) == 0
    b = run_engine(tmp_path, [SHARED], agent_kv_config(cache), hash_seed=SEED)
    assert disk_tokens(b["prompts"][0]) == PROMPT_LEN
    assert b["prompts"][0]["output_token_ids"] == engine_a["prompts"][0]["output_token_ids"]
    assert b["leaked_shm"] == []


def test_the_agent_writes_the_namespace_config_json_and_vllms_block_files(
    engine_a: dict[str, Any], cache: Cache
) -> None:
    (config,) = cache.volume.glob("*/config.json")
    fields = json.loads(config.read_text())
    assert fields["tokens_per_hash"] == BLOCK_SIZE and fields["inference_engine"] == "vllm"
    blocks = list(config.parent.with_name(config.parent.name + "_r0").rglob("*.bin"))
    assert len(blocks) >= (2 + len(SERVE)) * PROMPT_LEN // BLOCK_SIZE


def test_an_agent_mode_engine_reads_what_a_native_mode_engine_wrote_and_the_other_way_round(
    engine_a: dict[str, Any], cache: Cache, run_engine: Runner, tmp_path: Path
) -> None:
    native = native_kv_config(cache.volume)
    first = run_engine(tmp_path / "native-writes", [NATIVE_FIRST], native, hash_seed=SEED)
    assert disk_tokens(first["prompts"][0]) == 0
    reader = run_engine(tmp_path / "agent-reads", [NATIVE_FIRST], agent_kv_config(cache), hash_seed=SEED)
    assert disk_tokens(reader["prompts"][0]) == PROMPT_LEN
    assert reader["prompts"][0]["output_token_ids"] == first["prompts"][0]["output_token_ids"]
    native_reader = run_engine(tmp_path / "native-reads", [AGENT_FIRST], native, hash_seed=SEED)
    assert disk_tokens(native_reader["prompts"][0]) == PROMPT_LEN
    assert native_reader["prompts"][0]["output_token_ids"] == engine_a["prompts"][1]["output_token_ids"]


def test_an_engine_keeps_serving_correctly_while_the_agent_is_down_and_uses_it_again_after_a_restart(
    engine_a: dict[str, Any], agent: AgentProcess, cache: Cache, run_engine: Runner, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    engine = run_engine(
        tmp_path,
        SERVE,
        agent_kv_config(cache),
        hash_seed=SEED,
        extra_args=["--gate-dir", str(gate)],
        background=True,
    )
    wait_for(gate / "ready-1", engine)
    agent.kill()
    (gate / "go-1").touch()
    wait_for(gate / "ready-2", engine)
    restarted = AgentProcess(cache, tmp_path / "agent-restarted.log")
    try:
        deadline = time.monotonic() + 30
        while "hello from" not in restarted.log() and time.monotonic() < deadline:
            time.sleep(0.1)  # the engine's link reconnects with backoff
        (gate / "go-2").touch()
        result = engine_result(tmp_path, engine)
    finally:
        restarted.stop()
    served = result["prompts"]
    assert [disk_tokens(p) for p in served] == [PROMPT_LEN, 0, PROMPT_LEN]
    reference = [p["output_token_ids"] for p in engine_a["prompts"][2:]]
    assert [p["output_token_ids"] for p in served] == reference


def wait_for(path: Path, engine: Any, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert engine.poll() is None, f"the engine exited early ({engine.returncode})"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)
