"""The vLLM tier plugin against a real AgentServer, driven the way vLLM's tiering manager drives it."""

import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tieredkv_agent.api.protocol import none_hash_fingerprint
from tieredkv_agent.api.server import AgentServer
from tieredkv_agent.standin.driver import Driver, ReqContext
from tieredkv_agent.standin.engine import block_content, build_tier, engine_spec, prompt, request_keys
from tieredkv_agent.standin.region import SharedRegion
from tieredkv_agent.store.naming import block_path
from tieredkv_agent.tiers.file import FileTier
from tieredkv_agent.vllm import TieredKVTier, compat
from tieredkv_agent.vllm.region import RegionError, backing_file, locate, parse_maps

pytestmark = pytest.mark.unit

BLOCK = 8192
SEED_ENV = {"PYTHONHASHSEED": "1234"}


@pytest.fixture
def tier(tmp_path: Path) -> Iterator[FileTier]:
    made = FileTier(root_dir=tmp_path / "volume", negative_ttl_s=0.05, direct=False)
    yield made
    made.shutdown(2.0)


@pytest.fixture
def server(tmp_path: Path, tier: FileTier) -> Iterator[AgentServer]:
    spec = engine_spec(environ=SEED_ENV)
    fingerprint = none_hash_fingerprint(spec.tieredkv_engine.none_hash)
    made = AgentServer(
        tmp_path / "run" / "agent.sock", tier, agent_version="test", expected_fingerprint=fingerprint
    )
    yield made
    made.close()


def entry(server: AgentServer) -> dict[str, object]:
    return {
        "type": "TieredKVTier",
        "module_path": "tieredkv_agent.vllm",
        "socket_path": str(server.socket_path),
        "cache_namespace": "ns",
        "cache_name": "cache",
    }


@pytest.fixture
def engines(server: AgentServer) -> Iterator[list[tuple[SharedRegion, TieredKVTier]]]:
    made: list[tuple[SharedRegion, TieredKVTier]] = []
    for name in ("a", "b"):
        region = SharedRegion(f"test-{os.getpid()}-{name}", 16, BLOCK)
        connected = {**entry(server), "startup_wait_s": 5.0}
        made.append((region, build_tier(connected, engine_spec(environ=SEED_ENV), region.view)))
    yield made
    for region, plugin in made:
        plugin.shutdown()
        region.close()


def content(key: bytes) -> bytes:
    return block_content(key, BLOCK)


def test_engine_b_loads_what_engine_a_stored_byte_for_byte_at_vllm_file_paths(
    engines: list[tuple[SharedRegion, TieredKVTier]], tier: FileTier
) -> None:
    (region_a, plugin_a), (region_b, plugin_b) = engines
    keys = request_keys(engine_spec(environ=SEED_ENV), prompt(7, 16 * 6))
    first = Driver(plugin_a, region_a, content).run_request("a-1", keys)
    assert (first.computed, first.stored, first.loaded, first.mismatched) == (6, 6, 0, [])
    second = Driver(plugin_b, region_b, content).run_request("b-1", keys)
    assert (second.loaded, second.computed, second.failed_loads, second.mismatched) == (6, 0, 0, [])
    blocks_dir = tier.root_dir / f"{plugin_a.namespace}_r0"
    for key in keys:
        assert Path(block_path(blocks_dir, key)).read_bytes() == content(key)


def test_a_prefix_is_loaded_and_the_rest_computed_when_only_part_was_stored(
    engines: list[tuple[SharedRegion, TieredKVTier]],
) -> None:
    (region_a, plugin_a), (region_b, plugin_b) = engines
    tokens = prompt(8, 16 * 8)
    spec = engine_spec(environ=SEED_ENV)
    Driver(plugin_a, region_a, content).run_request("a-1", request_keys(spec, tokens[: 16 * 3]))
    outcome = Driver(plugin_b, region_b, content).run_request("b-1", request_keys(spec, tokens))
    assert (outcome.loaded, outcome.computed, outcome.stored, outcome.mismatched) == (3, 5, 5, [])


def test_the_older_block_ids_job_shape_is_accepted(engines: list[tuple[SharedRegion, TieredKVTier]]) -> None:
    (region_a, plugin_a), (region_b, plugin_b) = engines
    keys = request_keys(engine_spec(environ=SEED_ENV), prompt(9, 16 * 2))
    assert Driver(plugin_a, region_a, content, legacy_jobs=True).run_request("a", keys).stored == 2
    assert Driver(plugin_b, region_b, content, legacy_jobs=True).run_request("b", keys).loaded == 2


def test_drain_reports_every_job_before_it_returns(engines: list[tuple[SharedRegion, TieredKVTier]]) -> None:
    region, plugin = engines[0]
    driver = Driver(plugin, region, content)
    keys = request_keys(engine_spec(environ=SEED_ENV), prompt(10, 16 * 4))
    driver._compute_and_cascade(keys, ReqContext("r"))
    driver.reset()  # asserts nothing is left unreported
    assert not plugin.has_pending_work()


def test_a_plugin_without_an_agent_misses_and_fails_jobs_once_and_then_connects(
    tmp_path: Path, tier: FileTier
) -> None:
    socket_path = tmp_path / "later" / "agent.sock"
    region = SharedRegion(f"test-{os.getpid()}-late", 8, BLOCK)
    spec = engine_spec(environ=SEED_ENV)
    tier_entry = {
        "type": "TieredKVTier",
        "module_path": "tieredkv_agent.vllm",
        "socket_path": str(socket_path),
    }
    plugin = build_tier({**tier_entry, "startup_wait_s": 0.0}, spec, region.view)
    try:
        keys = request_keys(spec, prompt(11, 16 * 2))
        outcome = Driver(plugin, region, content).run_request("r", keys)
        assert (outcome.computed, outcome.stored, outcome.failed_stores) == (2, 0, 2)
        fingerprint = none_hash_fingerprint(spec.tieredkv_engine.none_hash)
        server = AgentServer(socket_path, tier, agent_version="test", expected_fingerprint=fingerprint)
        try:
            for _ in range(500):  # the link reconnects on its own, with backoff
                if plugin.link.client() is not None:
                    break
                time.sleep(0.01)
            assert plugin.link.client() is not None
            again = Driver(plugin, region, content).run_request("r2", request_keys(spec, prompt(12, 16)))
            assert (again.stored, again.failed_stores) == (1, 0)
        finally:
            server.close()
    finally:
        plugin.shutdown()
        region.close()


def test_a_seed_mismatch_fails_the_constructor_never_but_every_connect_names_both_fingerprints(
    server: AgentServer,
) -> None:
    region = SharedRegion(f"test-{os.getpid()}-bad", 4, BLOCK)
    try:
        plugin = build_tier(
            {**entry(server), "startup_wait_s": 0.5},
            engine_spec(environ={"PYTHONHASHSEED": "9"}),
            region.view,
        )
        try:
            assert plugin.link.client() is None
            assert "differs from the agent's" in plugin.link.last_error
            assert plugin.engine.identity().profile.none_hash_fingerprint in plugin.link.last_error
        finally:
            plugin.shutdown()
    finally:
        region.close()


def test_the_region_file_is_found_from_the_view_alone() -> None:
    region = SharedRegion(f"test-{os.getpid()}-find", 4, BLOCK)
    try:
        found = backing_file(region.view)
        assert (found.path, found.view_bytes, found.block_bytes) == (str(region.path), 4 * BLOCK, BLOCK)
        with pytest.raises(RegionError, match=r"not backed by a file|spans"):
            backing_file(memoryview(bytearray(BLOCK * 2)).cast("B", (2, BLOCK)))
    finally:
        region.close()


def test_a_view_at_a_nonzero_file_offset_or_a_private_mapping_is_refused() -> None:
    maps = parse_maps(
        "7f0000000000-7f0000002000 rw-s 00001000 00:1a 7 /dev/shm/r.mmap\n"
        "7f0000010000-7f0000012000 rw-p 00000000 00:1a 8 /dev/shm/p.mmap\n"
    )
    with pytest.raises(RegionError, match="byte 0"):
        locate(0x7F0000000000, 0x2000, maps)
    with pytest.raises(RegionError, match="private"):
        locate(0x7F0000010000, 0x1000, maps)
    with pytest.raises(RegionError, match="do not cover"):
        locate(0x7F0000001000, 0x2000, parse_maps("7f0000000000-7f0000002000 rw-s 0 00:1a 7 /dev/shm/r.mmap"))


def test_job_results_carry_only_the_fields_the_installed_job_result_has() -> None:
    result = compat.make_job_result(3, False, successful_keys=[b"k"], transfer_time=0.5, transfer_bytes=9)
    assert (result.job_id, result.success, list(result.successful_keys)) == (3, False, [b"k"])
    assert compat.job_slots(SimpleNamespace(block_ids=[4, 5])) == [4, 5]
    with pytest.raises(TypeError, match="chunk_ids"):
        compat.job_slots(SimpleNamespace())
