"""The plugin contract with real processes: an agent set up from the operator's DaemonSet env, stand-in
engines given the operator's rendered kv-transfer-config, and the plugin driven as vLLM drives it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.contract_harness import SEED, AgentProcess, Cache, finish, make_cache, start_engine
from tieredkv_agent.standin.__main__ import tier_entry
from tieredkv_agent.standin.driver import Driver, ReqContext
from tieredkv_agent.standin.engine import block_content, build_tier, engine_spec, prompt, request_keys
from tieredkv_agent.standin.region import SharedRegion
from tieredkv_agent.store.naming import block_path

pytestmark = pytest.mark.unit

BLOCK = 65536


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return make_cache(tmp_path)


@pytest.fixture
def agent(cache: Cache, tmp_path: Path) -> Iterator[AgentProcess]:
    proc = AgentProcess(cache, tmp_path / "agent.log")
    yield proc
    proc.stop()


def test_the_operators_rendered_tier_entry_is_exactly_the_plugins_constructor_call(cache: Cache) -> None:
    entry = tier_entry(cache.kv_transfer_config)
    assert entry == {
        "type": "TieredKVTier",
        "module_path": "tieredkv_agent.vllm",
        "socket_path": str(cache.socket_path),
        "cache_namespace": "team",
        "cache_name": "shared",
    }


def test_engine_b_in_another_process_loads_what_engine_a_stored_and_the_files_are_vllms(
    cache: Cache, agent: AgentProcess
) -> None:
    first, _ = finish(start_engine(cache, "a", ["1:512"]))
    assert (first["computed"], first["stored"], first["failed_stores"]) == (32, 32, 0)
    second, _ = finish(start_engine(cache, "b", ["1:512"]))
    assert (second["loaded"], second["computed"], second["failed_loads"], second["mismatched"]) == (
        32,
        0,
        0,
        0,
    )
    spec = engine_spec(environ={"PYTHONHASHSEED": SEED})
    blocks_dir = cache.volume / f"{spec.tieredkv_engine.namespace}_r0"
    for key in request_keys(spec, prompt(1, 512)):
        assert Path(block_path(blocks_dir, key)).read_bytes() == block_content(key, BLOCK)


def test_four_engines_share_one_agent_at_once(cache: Cache, agent: AgentProcess) -> None:
    engines = [start_engine(cache, f"e{n}", [f"{n % 2}:256", "7:256", f"{10 + n}:128"]) for n in range(4)]
    summaries = [finish(engine)[0] for engine in engines]
    assert all(s["mismatched"] == 0 and s["failed_loads"] == 0 and s["failed_stores"] == 0 for s in summaries)
    assert sum(s["loaded"] for s in summaries) > 0
    assert all(s["loaded"] + s["computed"] == s["blocks"] for s in summaries)


def test_an_engine_with_another_seed_is_refused_naming_both_fingerprints(
    cache: Cache, agent: AgentProcess
) -> None:
    summary, err = finish(start_engine(cache, "rogue", ["3:128"], seed="1"))
    assert (summary["stored"], summary["failed_stores"], summary["loaded"]) == (0, 8, 0)
    assert "differs from the agent's" in err and "INCOMPATIBLE" in err
    assert "differs from the agent's" in agent.log()


def test_a_killed_agent_fails_each_job_in_flight_once_and_a_restarted_one_is_used_again(
    cache: Cache, agent: AgentProcess, tmp_path: Path
) -> None:
    spec = engine_spec(environ={"PYTHONHASHSEED": SEED})
    region = SharedRegion(f"kill-{os.getpid()}", 64, BLOCK)
    entry = {**tier_entry(cache.kv_transfer_config), "startup_wait_s": 10.0, "release_grace_s": 0.2}
    tier = build_tier(entry, spec, region.view)
    driver = Driver(tier, region, lambda key: block_content(key, BLOCK))
    try:
        assert tier.link.client() is not None
        for n in range(6):  # six store jobs of eight blocks, then the agent dies under them
            keys = request_keys(spec, prompt(100 + n, 128))
            driver._compute_and_cascade(keys, ReqContext(f"r{n}"))
        agent.kill()
        deadline = time.monotonic() + 10
        while driver._pending and time.monotonic() < deadline:
            driver.poll()  # asserts on any unknown or repeated job id
            time.sleep(0.01)
        assert not driver._pending
        assert not tier.has_pending_work()
        restarted = AgentProcess(cache, tmp_path / "agent2.log")
        try:
            deadline = time.monotonic() + 10
            while tier.link.client() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            outcome = driver.run_request("after", request_keys(spec, prompt(200, 128)))
            assert (outcome.stored, outcome.failed_stores) == (8, 0)
        finally:
            restarted.stop()
    finally:
        tier.shutdown()
        region.close()
