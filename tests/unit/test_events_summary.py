"""The membership summary: Bloom filters of the volume's block hashes, rebuilt by walks, served over HTTP."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.unit.test_events_sources import Recorder
from tieredkv_agent.events import BlockEvents
from tieredkv_agent.events.summary import K, MembershipSummary, bloom_bits, positions
from tieredkv_agent.events.summary_server import SummaryService
from tieredkv_agent.store.naming import (
    KvCacheGroup,
    RunConfig,
    block_path,
    ensure_namespace,
    make_offload_key,
    namespace_for,
)

pytestmark = pytest.mark.unit

CONFIG = RunConfig("org/model", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0",)),))


def block_hash(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest()


def put(ns_blocks: Path, n: int) -> None:
    target = Path(block_path(ns_blocks, make_offload_key(block_hash(n), 0)))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"x")


def test_every_block_on_the_volume_is_in_its_namespace_filter_and_few_others_are(tmp_path: Path) -> None:
    namespace = namespace_for(tmp_path, CONFIG)
    ensure_namespace(namespace)
    for n in range(2000):
        put(namespace.blocks_dir, n)
    odd = namespace.blocks_dir / "abc" / "de_g0" / "abcdez.bin"  # not hex: skipped
    odd.parent.mkdir(parents=True, exist_ok=True)
    odd.write_bytes(b"x")
    summary = MembershipSummary(tmp_path)
    summary.rebuild()
    name = namespace.config_dir.name
    assert all(summary.contains(name, block_hash(n)) for n in range(2000))
    false_positives = sum(summary.contains(name, block_hash(n)) for n in range(2000, 22000))
    assert false_positives < 20000 * 0.03
    index = summary.index()
    assert index["version"] == 1
    assert index["namespaces"] == {
        name: {
            "model": "org/model",
            "blocks": 2000,
            "bits": bloom_bits(2000),
            "k": K,
            "path": f"/kv/summary/{name}",
        }
    }
    assert not summary.contains("other_0123456789ab", block_hash(1))


def test_a_stored_block_joins_the_filter_before_the_next_walk_and_a_deleted_one_leaves_at_it(
    tmp_path: Path,
) -> None:
    namespace = namespace_for(tmp_path, CONFIG)
    ensure_namespace(namespace)
    put(namespace.blocks_dir, 1)
    summary = MembershipSummary(tmp_path)
    summary.rebuild()
    events = BlockEvents(Recorder(), "pool:ns/c")
    events.summary = summary
    events.block_file(namespace, make_offload_key(block_hash(2), 0), True)
    name = namespace.config_dir.name
    assert summary.contains(name, block_hash(2))
    for path in namespace.blocks_dir.rglob("*.bin"):
        path.unlink()
    summary.rebuild()
    assert summary.index()["version"] == 2
    assert not summary.contains(name, block_hash(1)) and not summary.contains(name, block_hash(2))


def test_a_router_reads_the_index_and_a_filter_over_http_and_tests_membership_itself(tmp_path: Path) -> None:
    namespace = namespace_for(tmp_path, CONFIG)
    ensure_namespace(namespace)
    for n in range(100):
        put(namespace.blocks_dir, n)
    service = SummaryService(MembershipSummary(tmp_path), "127.0.0.1", 0, interval_s=3600)
    service.start()
    try:
        base = f"http://127.0.0.1:{service.port}"
        for _ in range(200):
            with urllib.request.urlopen(f"{base}/kv/summary", timeout=5) as reply:
                index = json.loads(reply.read())
            if index["version"]:
                break
        (entry,) = index["namespaces"].values()
        with urllib.request.urlopen(base + entry["path"], timeout=5) as reply:
            data = reply.read()
            assert reply.headers["X-Tieredkv-Version"] == "1"
            bits = int(reply.headers["X-Tieredkv-Bits"])
        assert len(data) * 8 == bits == entry["bits"]
        member = [
            all(data[p // 8] & (1 << (p % 8)) for p in positions(block_hash(n), bits)) for n in range(100)
        ]
        assert all(member)
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"{base}/kv/summary/nope", timeout=5)
    finally:
        service.stop()


def walker(tmp_path: Path, *, native: bool) -> tuple[MembershipSummary, Recorder, list[bool], str]:
    """A summary whose walks feed a WalkAnnouncer into a recording sink; `leader[0]` is the leadership."""
    from tieredkv_agent.events.announce import WalkAnnouncer

    namespace = namespace_for(tmp_path, CONFIG)
    ensure_namespace(namespace)
    sink, leader = Recorder(), [True]
    events = BlockEvents(sink, "pool:ns/c")
    events.root = tmp_path
    summary = MembershipSummary(tmp_path)
    WalkAnnouncer(events, lambda: leader[0], announce_new=native).attach(summary)
    return summary, sink, leader, namespace.config_dir.name


def announced(sink: Recorder) -> list[bytes]:
    """The blocks announced stored (a snapshot's clears, which come first, left out)."""
    assert all(c.topic == "kv@pool:ns/c@org/model" for c in sink.changes)
    stored = [c for c in sink.changes if not c.cleared]
    assert all(not c.removed for c in stored)
    return sorted(c.block_hash for c in stored)


def snapshots(sink: Recorder) -> int:
    """How many snapshots began (each with its clear, before any of its blocks)."""
    return sum(c.cleared for c in sink.changes)


def test_a_leader_announces_the_whole_volume_on_its_first_walk_and_native_files_on_later_ones(
    tmp_path: Path,
) -> None:
    summary, sink, _, name = walker(tmp_path, native=True)
    blocks_dir = namespace_for(tmp_path, CONFIG).blocks_dir
    zero_tail = block_hash(7)[:-1] + b"\0"  # numpy's fixed-size bytes drop trailing NULs: not here
    target = Path(block_path(blocks_dir, make_offload_key(zero_tail, 2)))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"x")
    for n in range(10):
        put(blocks_dir, n)
    summary.rebuild()
    assert sink.changes[0].cleared and snapshots(sink) == 1
    assert announced(sink) == sorted([block_hash(n) for n in range(10)] + [zero_tail])
    assert {c.group_idx for c in sink.changes if c.block_hash == zero_tail} == {2}
    assert {c.ownership for c in sink.changes if not c.cleared} == {name}
    sink.changes.clear()
    for n in range(10, 13):  # vLLM's fs tier wrote these: no agent store announced them
        put(blocks_dir, n)
    summary.rebuild()
    assert announced(sink) == sorted(block_hash(n) for n in range(10, 13))


def test_agent_mode_announces_only_the_snapshot_and_a_follower_nothing_until_it_leads(tmp_path: Path) -> None:
    summary, sink, leader, _ = walker(tmp_path, native=False)
    blocks_dir = namespace_for(tmp_path, CONFIG).blocks_dir
    put(blocks_dir, 1)
    leader[0] = False
    summary.rebuild()
    assert sink.changes == []
    leader[0] = True
    summary.rebuild()
    assert announced(sink) == [block_hash(1)]
    put(blocks_dir, 2)
    summary.rebuild()  # agent mode: the agent's store announced block 2 itself
    assert announced(sink) == [block_hash(1)]
    leader[0] = False
    summary.rebuild()
    leader[0] = True
    summary.rebuild()  # leadership regained: a fresh snapshot
    assert announced(sink) == sorted([block_hash(1), block_hash(1), block_hash(2)])
    assert snapshots(sink) == 2


def test_a_walked_file_gc_deleted_before_its_announcement_is_announced_stored_then_removed(
    tmp_path: Path,
) -> None:
    namespace = namespace_for(tmp_path, CONFIG)
    ensure_namespace(namespace)
    sink = Recorder()
    events = BlockEvents(sink, "pool:ns/c")
    events.root = tmp_path
    put(namespace.blocks_dir, 1)
    events.announce(namespace.config_dir.name, block_hash(1), 0)
    events.announce(namespace.config_dir.name, block_hash(2), 0)  # walked, then deleted by GC
    assert [(c.block_hash, c.removed) for c in sink.changes] == [
        (block_hash(1), False),
        (block_hash(2), False),
        (block_hash(2), True),
    ]
