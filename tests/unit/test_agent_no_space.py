"""A full volume: stores fail as `no_space` (ENOSPC or EDQUOT), the client is told so, the failures are
counted, and GC reclaims space at once, without the grace period holding relief back."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.api_client_worker import (
    BLOCK,
    FINGERPRINT,
    WAIT_S,
    content,
    key,
    profile,
    region_file,
    shm_dir,
    wait_jobs,
)
from tieredkv_agent.api.client import AgentClient
from tieredkv_agent.api.server import AgentServer
from tieredkv_agent.capacity import CapacityManager
from tieredkv_agent.engine.jobs import JobKind, KeyStatus
from tieredkv_agent.metrics import AgentMetrics
from tieredkv_agent.store.blockio import BlockFiles, FileOps
from tieredkv_agent.store.naming import KvCacheGroup, RunConfig, namespace_for
from tieredkv_agent.tiers.file import FileTier

pytestmark = pytest.mark.unit

CONFIG = RunConfig("org/full", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0",)),))


class FullVolume(FileOps):
    """Real files, except that every block write finds the volume full (`code`)."""

    def __init__(self, code: int) -> None:
        self.code = code

    def write(self, fd: int, data: memoryview) -> int:
        raise OSError(self.code, os.strerror(self.code))


@pytest.fixture(params=[errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
def full_tier(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[FileTier, list[int]]]:
    calls: list[int] = []
    tier = FileTier(
        root_dir=tmp_path / "volume",
        direct=False,
        ops=FullVolume(request.param),
        on_no_space=lambda: calls.append(1),
    )
    yield tier, calls
    tier.shutdown(2.0)


def test_a_full_volume_reaches_the_client_as_no_space_and_is_counted(
    full_tier: tuple[FileTier, list[int]], tmp_path: Path
) -> None:
    tier, calls = full_tier
    name = tier.namespace(CONFIG).config_dir.name
    server = AgentServer(
        tmp_path / "run" / "agent.sock", tier, agent_version="t", expected_fingerprint=FINGERPRINT
    )
    keys = [key(index, "full") for index in range(3)]
    try:
        with region_file(4 * BLOCK, shm_dir(str(tmp_path))) as region:
            for slot, k in enumerate(keys):
                region.fill(slot, content(k))
            with AgentClient(
                server.socket_path,
                instance_id="pod/engine",
                vllm_version="0.33.0",
                profile=profile(name),
                region_fd=region.fd,
                region_bytes=region.size,
                timeout_s=WAIT_S,
            ) as client:
                client.submit_store(1, name, keys, [0, 1, 2])
                [done] = wait_jobs(client, 1)
    finally:
        server.close()
    assert (done.success, done.reason) == (False, "no_space")
    assert done.flags(3) == [False] * 3
    assert tier.stats().pool.settled_blocks[JobKind.STORE, KeyStatus.NO_SPACE] == 3
    assert len(calls) == 3
    metrics = AgentMetrics()
    metrics.file_tier.tier = tier
    sample = metrics.registry.get_sample_value("tieredkv_blocks_total", {"op": "store", "result": "no_space"})
    assert sample == 3


def write_blocks(root: Path, count: int) -> list[Path]:
    namespace = namespace_for(root, CONFIG)
    files = BlockFiles(direct=False)
    paths = [Path(namespace.block_path(key(index, "gc"))) for index in range(count)]
    for path in paths:
        assert files.store(str(path), b"\x07" * BLOCK).ok
    return paths


def test_under_a_full_volume_gc_evicts_blocks_younger_than_the_grace_period(tmp_path: Path) -> None:
    paths = write_blocks(tmp_path, 10)
    later = time.time() + 5  # the blocks are 5 s old: inside the 120 s grace period, past the 1 s one
    manager = CapacityManager(
        tmp_path, max_bytes=10 * BLOCK, grace_s=120.0, watch_filesystem=False, clock=lambda: later
    )
    assert manager.run_pass().eviction.files == 0, "the grace period protects fresh blocks normally"
    manager.volume_full()
    evicted = manager.run_pass().eviction.files
    assert evicted > 0
    assert sum(path.exists() for path in paths) == 10 - evicted


def test_a_no_space_report_wakes_the_gc_thread_at_once(tmp_path: Path) -> None:
    write_blocks(tmp_path, 10)
    manager = CapacityManager(tmp_path, max_bytes=10 * BLOCK, scan_interval_s=3600, watch_filesystem=False)
    manager.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while manager.passes_total < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        manager.volume_full()
        while manager.passes_total < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert manager.passes_total >= 2, "the GC thread slept through a full volume"
    finally:
        manager.stop()
