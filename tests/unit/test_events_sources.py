"""KV events from the sources of truth: the file tier's published stores and the GC's deletions."""

from __future__ import annotations

import hashlib
import mmap
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from tieredkv_agent.capacity.manager import CapacityManager
from tieredkv_agent.engine.jobs import BlockJob, CompletionQueue, KeyStatus
from tieredkv_agent.events import BlockEvents, Change, KvEventPublisher, parse_block_path, pool_identity
from tieredkv_agent.events.wire import BlockRemoved, BlockStored, decode_batch
from tieredkv_agent.store.naming import KvCacheGroup, Namespace, RunConfig, make_offload_key
from tieredkv_agent.tiers.file import FileTier

pytestmark = pytest.mark.unit

BLOCK = 4096
CONFIG = RunConfig("org/model", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0",)),))
IDENTITY = pool_identity("ns", "cache")


class Recorder:
    """A change sink that keeps every change (stands in for the publisher's queue)."""

    def __init__(self) -> None:
        self.changes: list[Change] = []

    def publish(self, change: Change) -> bool:
        self.changes.append(change)
        return True

    def publish_waiting(self, change: Change, timeout_s: float = 5.0) -> bool:
        return self.publish(change)


def key(n: int, group: int = 0) -> bytes:
    return make_offload_key(hashlib.sha256(str(n).encode()).digest(), group)


def store(tier: FileTier, namespace: Namespace, keys: list[bytes], job_id: int = 1) -> tuple[KeyStatus, ...]:
    source = memoryview(mmap.mmap(-1, len(keys) * BLOCK))
    done = CompletionQueue()
    blocks = [(k, source[i * BLOCK : (i + 1) * BLOCK]) for i, k in enumerate(keys)]
    tier.submit_store(BlockJob(job_id, namespace, blocks), done)
    result = done.get(10.0)
    assert result is not None
    return result.statuses


def block_files(root: Path) -> set[tuple[str, bytes, int]]:
    """(namespace dir, block hash, group) of every block file under `root`."""
    out = set()
    for path in root.rglob("*.bin"):
        parsed = parse_block_path(str(path))
        assert parsed is not None
        out.add((parsed[0].name, parsed[1], parsed[2]))
    return out


@pytest.fixture
def tiers(tmp_path: Path) -> Iterator[tuple[FileTier, FileTier, Recorder, Recorder]]:
    """Two agents' file tiers on one volume, each with its own recorder."""
    first, second = Recorder(), Recorder()
    a = FileTier(root_dir=tmp_path, on_block_file=BlockEvents(first, IDENTITY).block_file)
    b = FileTier(root_dir=tmp_path, on_block_file=BlockEvents(second, IDENTITY).block_file)
    yield a, b, first, second
    a.shutdown(2.0)
    b.shutdown(2.0)


def test_a_block_path_parses_back_to_its_namespace_hash_and_group(tmp_path: Path) -> None:
    tier = FileTier(root_dir=tmp_path)
    try:
        namespace = tier.namespace(CONFIG)
        parsed = parse_block_path(namespace.block_path(key(7, group=3)))
        assert parsed == (namespace.config_dir, hashlib.sha256(b"7").digest(), 3)
    finally:
        tier.shutdown(2.0)
    assert parse_block_path("/v/ns_0123456789ab_r0/abc/de_g0/abcdef.tmp") is None
    assert parse_block_path("/v/ns_0123456789ab_r0/abc/xx_g0/abcdef.bin") is None
    assert parse_block_path("/v/not-a-namespace/abc/de_g0/abcdef.bin") is None


def test_only_the_store_that_published_a_file_announces_it(
    tiers: tuple[FileTier, FileTier, Recorder, Recorder],
) -> None:
    a, b, first, second = tiers
    namespace = a.namespace(CONFIG)
    assert store(a, namespace, [key(1), key(2)]) == (KeyStatus.DONE, KeyStatus.DONE)
    assert store(b, namespace, [key(2), key(3)]) == (KeyStatus.PRESENT, KeyStatus.DONE)
    assert store(a, namespace, [key(1)], job_id=2) == (KeyStatus.PRESENT,)
    topic = f"kv@{IDENTITY}@org/model"
    owner = namespace.config_dir.name
    expect = [Change(topic, False, key(n)[:-4], 0, owner) for n in (1, 2)]
    assert sorted(first.changes, key=lambda c: c.block_hash) == sorted(expect, key=lambda c: c.block_hash)
    assert second.changes == [Change(topic, False, key(3)[:-4], 0, owner)]


def test_every_block_gc_deletes_is_announced_removed_and_nothing_else(tmp_path: Path) -> None:
    recorder = Recorder()
    events = BlockEvents(recorder, IDENTITY)
    tier = FileTier(root_dir=tmp_path, on_block_file=events.block_file)
    try:
        namespace = tier.namespace(CONFIG)
        store(tier, namespace, [key(n) for n in range(40)])
    finally:
        tier.shutdown(2.0)
    old = time.time() - 3600
    for path in tmp_path.rglob("*.bin"):
        os.utime(path, (old, old))
    before = block_files(tmp_path)
    gc = CapacityManager(
        tmp_path, max_bytes=30 * BLOCK, high_watermark=0.8, low_watermark=0.5, watch_filesystem=False
    )
    gc.on_evicted = events.evicted
    report = gc.run_pass()
    after = block_files(tmp_path)
    assert report.eviction.files == len(before - after) > 0
    removed = {(c.ownership, c.block_hash, c.group_idx) for c in recorder.changes if c.removed}
    assert removed == before - after
    stored = {(c.ownership, c.block_hash, c.group_idx) for c in recorder.changes if not c.removed}
    assert stored == before
    assert all(c.topic == f"kv@{IDENTITY}@org/model" for c in recorder.changes)


def test_a_subscriber_rebuilds_the_volume_from_the_events_after_stores_and_gc(tmp_path: Path) -> None:
    publisher = KvEventPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    events = BlockEvents(publisher, IDENTITY)
    tier = FileTier(root_dir=tmp_path, on_block_file=events.block_file)
    gc = CapacityManager(
        tmp_path, max_bytes=50 * BLOCK, high_watermark=0.8, low_watermark=0.5, watch_filesystem=False
    )
    gc.on_evicted = events.evicted
    with zmq.Context() as ctx:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVTIMEO, 5000)
        sub.connect(publisher.endpoint)
        sub.setsockopt_string(zmq.SUBSCRIBE, "")
        while publisher.stats().subscriptions == 0:
            time.sleep(0.005)
        try:
            namespace = tier.namespace(CONFIG)
            for job in range(4):
                store(tier, namespace, [key(job * 25 + n) for n in range(25)], job_id=job)
            old = time.time() - 3600
            for path in tmp_path.rglob("*.bin"):
                os.utime(path, (old, old))
            evicted = gc.run_pass().eviction.files
            assert evicted > 0
            view: set[tuple[str | None, bytes | int, int | None]] = set()
            announced = 0
            while announced < 100 + evicted:
                _, _, payload = sub.recv_multipart()
                for event in decode_batch(payload).events:
                    assert isinstance(event, BlockStored | BlockRemoved)
                    announced += len(event.block_hashes)
                    blocks = {(event.ownership, h, event.group_idx) for h in event.block_hashes}
                    if isinstance(event, BlockStored):
                        view |= blocks
                    else:
                        view -= blocks
            assert view == block_files(tmp_path)
        finally:
            sub.close(linger=0)
            tier.shutdown(2.0)
            publisher.close()


def test_the_agent_builds_its_publisher_from_the_settings_and_names_a_port_it_cannot_bind() -> None:
    from tests.unit.agent_process import free_port
    from tieredkv_agent.config import AgentSettings
    from tieredkv_agent.events import EventsStartupError, block_events
    from tieredkv_agent.events.assemble import endpoints

    assert block_events(AgentSettings()) is None
    port, replay = free_port(), free_port()
    settings = AgentSettings(
        events_enabled=True,
        events_port=port,
        events_replay_port=replay,
        pod_ip="127.0.0.1",
        cache_namespace="team",
        cache_name="shared",
        events_summary_port=0,
    )
    assert endpoints(settings) == (f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{replay}")
    assert endpoints(settings.model_copy(update={"pod_ip": "fd00::1", "events_replay_port": 0})) == (
        f"tcp://[fd00::1]:{port}",
        None,
    )
    events = block_events(settings)
    assert events is not None
    try:
        assert events.blocks.identity == "pool:team/shared"
        assert events.publisher.endpoint == f"tcp://127.0.0.1:{port}"
        with pytest.raises(EventsStartupError, match=f"127.0.0.1:{port}.*TIEREDKV_EVENTS_PORT"):
            block_events(settings)
    finally:
        events.publisher.close()


def test_the_watch_tool_shows_a_late_subscribers_view_equal_to_the_files_after_gc(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from tieredkv_agent.events.watch import main

    publisher = KvEventPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    events = BlockEvents(publisher, IDENTITY)
    tier = FileTier(root_dir=tmp_path, on_block_file=events.block_file)
    gc = CapacityManager(
        tmp_path, max_bytes=50 * BLOCK, high_watermark=0.8, low_watermark=0.5, watch_filesystem=False
    )
    gc.on_evicted = events.evicted
    try:
        namespace = tier.namespace(CONFIG)
        store(tier, namespace, [key(n) for n in range(80)])
        old = time.time() - 3600
        for path in tmp_path.rglob("*.bin"):
            os.utime(path, (old, old))
        assert gc.run_pass().eviction.files > 0
        while publisher.stats().queued_events:
            time.sleep(0.01)
        assert publisher.replay_endpoint is not None
        main(
            [
                "--connect",
                publisher.endpoint,
                "--replay",
                publisher.replay_endpoint,
                "--volume",
                str(tmp_path),
                "--seconds",
                "0.3",
            ]
        )
    finally:
        tier.shutdown(2.0)
        publisher.close()
    report = json.loads(capsys.readouterr().out)
    assert report["equal"] is True
    assert report["view_blocks"] == report["disk_blocks"] == len(block_files(tmp_path)) > 0
