"""Two instances on one node through the socket API: B loads what A stored, from RAM, byte for byte."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.api_client_worker import (
    BLOCK,
    FINGERPRINT,
    WAIT_S,
    Region,
    content,
    key,
    profile,
    region_file,
    shm_dir,
    wait_jobs,
)
from tests.unit.test_tiers_ram import CountingOps
from tieredkv_agent.api.client import AgentClient
from tieredkv_agent.api.protocol import LookupCode
from tieredkv_agent.api.server import AgentServer
from tieredkv_agent.copy.engine import CopyEngine
from tieredkv_agent.metrics import CapacityCollector, FileTierCollector, TiersCollector
from tieredkv_agent.store.naming import KvCacheGroup, RunConfig
from tieredkv_agent.tiers.file import FileTier
from tieredkv_agent.tiers.layered import LayeredTier
from tieredkv_agent.tiers.ram import RamPool

pytestmark = pytest.mark.unit

CONFIG = RunConfig("org/model", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0",)),))


@pytest.fixture
def ops() -> CountingOps:
    return CountingOps()


@pytest.fixture
def tier(tmp_path: Path, ops: CountingOps) -> Iterator[LayeredTier]:
    files = FileTier(root_dir=tmp_path / "volume", ops=ops, negative_ttl_s=60.0, direct=False)
    made = LayeredTier(ram=RamPool(64 * BLOCK), lower=files, engine=CopyEngine(cpu_threads=2))
    yield made
    made.shutdown(2.0)


@pytest.fixture
def server(tmp_path: Path, tier: LayeredTier) -> Iterator[AgentServer]:
    made = AgentServer(
        tmp_path / "run" / "agent.sock", tier, agent_version="test", expected_fingerprint=FINGERPRINT
    )
    yield made
    made.close()


def connect(server: AgentServer, name: str, region: Region, instance: str) -> AgentClient:
    return AgentClient(
        server.socket_path,
        instance_id=instance,
        vllm_version="0.33.0",
        profile=profile(name),
        region_fd=region.fd,
        region_bytes=region.size,
        timeout_s=WAIT_S,
    )


def samples(collector: TiersCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


def test_instance_b_loads_what_instance_a_stored_from_ram_without_reading_a_file(
    server: AgentServer, tier: LayeredTier, ops: CountingOps, tmp_path: Path
) -> None:
    name = tier.namespace(CONFIG).config_dir.name
    keys = [key(index, "shared-prompt") for index in range(6)]
    with (
        region_file(8 * BLOCK, shm_dir(str(tmp_path))) as region_a,
        connect(server, name, region_a, "pod/a") as a,
    ):
        for slot, k in enumerate(keys):
            region_a.fill(slot + 1, content(k))
        a.submit_store(1, name, keys, [1, 2, 3, 4, 5, 6])
        [stored] = wait_jobs(a, 1)
        assert stored.success
    with (
        region_file(8 * BLOCK, shm_dir(str(tmp_path))) as region_b,
        connect(server, name, region_b, "pod/b") as b,
    ):
        region_b.map[:] = b"\xab" * (8 * BLOCK)
        assert b.lookup(name, keys) == [LookupCode.HIT] * len(keys)
        b.submit_load(2, name, keys, [7, 6, 5, 0, 1, 2])
        [loaded] = wait_jobs(b, 1)
        assert loaded.success
        assert [region_b.slot(slot) for slot in (7, 6, 5, 0, 1, 2)] == [content(k) for k in keys]
        assert region_b.slot(3) == region_b.slot(4) == b"\xab" * BLOCK
    assert ops.reads == 0
    metrics = samples(TiersCollector(FileTierCollector(tier.lower), CapacityCollector(), tier.ram))
    assert metrics["tieredkv_tier_hit_blocks_total", (("tier", "ram"),)] == len(keys)
    assert metrics["tieredkv_tier_hit_blocks_total", (("tier", "file"),)] == 0
    assert metrics["tieredkv_ram_lookups_total", (("result", "hit"),)] == len(keys)
    assert metrics["tieredkv_ram_cached_blocks_total", (("source", "store"),)] == len(keys)
    assert metrics["tieredkv_ram_usage_bytes", ()] == len(keys) * BLOCK
    assert metrics["tieredkv_ram_limit_bytes", ()] == 64 * BLOCK


def test_the_agent_layers_a_ram_tier_only_in_agent_mode_with_bytes_configured(tmp_path: Path) -> None:
    from tieredkv_agent.config import AgentSettings
    from tieredkv_agent.metrics import AgentMetrics
    from tieredkv_agent.service import data_tier, file_tier

    for mode, ram_bytes, layered in (
        ("agent", 1 << 20, True),
        ("native", 1 << 20, False),
        ("agent", 0, False),
    ):
        settings = AgentSettings(store_dir=tmp_path, mode=mode, ram_tier_bytes=ram_bytes)
        metrics = AgentMetrics()
        files = file_tier(settings, metrics)
        made = data_tier(settings, files, metrics)
        try:
            assert isinstance(made, LayeredTier) is layered
            assert (metrics.tiers.ram is not None) is layered
        finally:
            made.shutdown(2.0)
