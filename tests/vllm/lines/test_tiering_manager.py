"""tieredkv's tier inside vLLM's own TieringOffloadingManager, for the vLLM line on the path.

vLLM's scheduler-side code is the line's unmodified wheel source; the agent is a real `tieredkv-agent run`
process configured from the operator's DaemonSet env; the tier entry is the operator's rendered one.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from vllm.v1.kv_offload.base import ReqContext
from vllm.v1.kv_offload.file_mapper import FileMapper
from vllm.v1.kv_offload.tiering.base import TransferJob

from tests.unit.contract_harness import AgentProcess, Cache
from tests.vllm.lines.conftest import LINE, EngineFactory
from tests.vllm.lines.manager_engine import TOKENS_PER_BLOCK, ManagerEngine, block_bytes_for

pytestmark = pytest.mark.vllm


def tokens(seed: int, blocks: int) -> list[int]:
    return [(seed * 7919 + i * 31) % 1000 for i in range(blocks * TOKENS_PER_BLOCK)]


def mapper(engine_spec: object, root: Path) -> FileMapper:
    return FileMapper.from_offloading_spec(
        root_dir=str(root),
        offloading_spec=engine_spec,  # type: ignore[arg-type]
        blocks_per_file=1,
        parallel_agnostic=True,
    )


def start_engines(*engines: ManagerEngine) -> None:
    """What follows building the tiers in vLLM's start-up: seed the block hashes; then each tier connects."""
    engines[0].seed_hashes()  # init_none_hash is process-wide
    for engine in engines:
        engine.wait_connected()


def test_the_tier_is_built_before_vllm_seeds_its_hashes_and_says_hello_only_after(
    agent: AgentProcess, engines: EngineFactory
) -> None:
    engine = engines("a")
    time.sleep(0.3)
    assert engine.tier.link.client() is None
    assert "hello from" not in agent.log()
    engine.seed_hashes()
    engine.wait_connected()
    assert f"(vllm {engine.tier.engine.vllm_version!r})" in agent.log()  # client strings are escaped


def test_a_second_engine_loads_what_the_first_stored_byte_for_byte_at_vllms_own_file_names(
    agent: AgentProcess, engines: EngineFactory, cache: Cache
) -> None:
    a, b = engines("a"), engines("b")
    start_engines(a, b)
    prompt = tokens(1, 6)
    first = a.run_request("a-1", prompt)
    assert (first.hits, first.computed, first.stored) == (0, 6, 6)
    second = b.run_request("b-1", prompt)
    assert (second.hits, second.computed, second.mismatched) == (6, 0, [])
    files = mapper(a.spec, cache.volume)
    for key in a.keys(prompt):
        assert Path(files.get_file_name(key)).read_bytes() == block_bytes_for(key, a.block)


def test_the_namespace_config_json_is_what_vllms_fs_tier_writes(
    agent: AgentProcess, engines: EngineFactory, cache: Cache
) -> None:
    a = engines("a")
    start_engines(a)
    a.run_request("a-1", tokens(2, 2))
    files = mapper(a.spec, cache.volume)
    expected = json.dumps(files.get_run_config(), indent=2, sort_keys=True)
    assert Path(files.get_config_file_path()).read_text() == expected


def test_a_partly_stored_prompt_loads_the_stored_prefix_and_computes_the_rest(
    agent: AgentProcess, engines: EngineFactory
) -> None:
    a, b = engines("a"), engines("b")
    start_engines(a, b)
    prompt = tokens(3, 8)
    a.run_request("a-1", prompt[: 3 * TOKENS_PER_BLOCK])
    outcome = b.run_request("b-1", prompt)
    assert (outcome.hits, outcome.computed, outcome.stored, outcome.mismatched) == (3, 5, 5, [])


def test_lookups_never_wait_on_the_scheduler_thread(agent: AgentProcess, engines: EngineFactory) -> None:
    a, b = engines("a"), engines("b")
    start_engines(a, b)
    prompt = tokens(4, 16)
    a.run_request("a-1", prompt)
    outcome = b.run_request("b-1", prompt)
    assert outcome.hits == 16
    probes = b.tier.lookups.probes_sent
    assert probes >= 16
    slowest = 0.0
    for key in b.keys(tokens(5, 16)):  # unknown keys: answered at once, asked in the background
        started = time.perf_counter()
        with b.lock():
            b.manager.lookup(key, ReqContext("b-2"))
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 0.005


def test_reset_cache_drains_every_job_before_it_returns(agent: AgentProcess, engines: EngineFactory) -> None:
    a = engines("a")
    start_engines(a)
    a.run_request("a-1", tokens(6, 24))
    with a.lock():
        a.manager.reset_cache()
        assert not a.tier._jobs  # every job the tier was given is reported
    a.settle()


def test_an_agent_killed_mid_job_fails_each_job_once_loads_stay_correct_and_a_restarted_agent_is_used(
    agent: AgentProcess, engines: EngineFactory, cache: Cache, tmp_path: Path
) -> None:
    a, b = engines("a"), engines("b", release_grace_s=0.3)
    start_engines(a, b)
    prompt = tokens(7, 48)
    a.run_request("a-1", prompt)
    agent.kill()
    outcome = b.run_request("b-1", prompt)  # whatever B was promised and loaded must be right
    assert outcome.mismatched == []
    assert outcome.hits + outcome.computed == 48
    restarted = AgentProcess(cache, tmp_path / "agent-2.log")
    try:
        b.wait_connected()
        again = b.run_request("b-2", prompt)
        assert (again.hits, again.mismatched) == (48, [])
    finally:
        restarted.stop()


def test_a_load_cut_off_by_the_agent_s_death_keeps_its_slots_until_the_grace_has_passed(
    agent: AgentProcess, engines: EngineFactory
) -> None:
    a, b = engines("a"), engines("b", release_grace_s=0.5)
    start_engines(a, b)
    prompt = tokens(8, 32)
    a.run_request("a-1", prompt)
    tier = b.tier
    os.kill(agent.proc.pid, signal.SIGSTOP)  # the agent holds the job and cannot answer it
    keys = b.keys(prompt)
    job = TransferJob(
        job_id=10**6, keys=keys, chunk_ids=np.arange(32), is_promotion=True, req_context=ReqContext("c")
    )
    tier.submit_load(job)
    agent.kill()
    started = time.monotonic()
    results = []
    while time.monotonic() - started < 5 and not results:
        results = list(tier.get_finished_jobs())
        time.sleep(0.01)
    if LINE >= "0.34":
        assert len(results) == 1 and not results[0].success
        event = results[0].deferred_release
        assert event is not None and not event.is_set()
        while not event.is_set() and time.monotonic() - started < 5:
            tier.get_finished_jobs()
            time.sleep(0.01)
        assert event.is_set() and time.monotonic() - started >= 0.5
    else:  # no deferred_release before 0.34: the failure itself waits for the grace
        assert len(results) == 1 and not results[0].success
        assert time.monotonic() - started >= 0.5
