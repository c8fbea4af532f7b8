"""The agent's file tier, publish protocol, lookup index and GC across two GlusterFS clients.

Every test runs the real agent modules on a real volume: node 1's client writes, node 2's client reads (or
both write at once), each through its own FUSE mount with its own attribute and dentry caches.
"""

from __future__ import annotations

import mmap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.gluster.conftest import TwoClients
from tests.unit.reliability_worker import CONFIG, block_content, block_key
from tieredkv_agent.capacity import CapacityManager
from tieredkv_agent.capacity.leader import FileLockElector
from tieredkv_agent.engine.index import LookupResult
from tieredkv_agent.engine.jobs import BlockJob, CompletionQueue, KeyStatus
from tieredkv_agent.store.blockio import BlockFiles, LoadStatus, StoreStatus, probe_o_direct
from tieredkv_agent.store.naming import ensure_namespace, namespace_for
from tieredkv_agent.tiers.file import FileTier

pytestmark = pytest.mark.gluster

BLOCK = 512 * 1024


def _region(blocks: int) -> memoryview:
    return memoryview(mmap.mmap(-1, blocks * BLOCK))


def _wait_job(queue: CompletionQueue) -> list[KeyStatus]:
    result = queue.get(30.0)
    assert result is not None, "a job did not complete within 30 s"
    return list(result.statuses)


def test_blocks_stored_by_the_file_tier_through_one_client_load_byte_identical_through_the_other(
    clients: TwoClients,
) -> None:
    keys = [block_key("cross", n) for n in range(12)]
    writer = FileTier(root_dir=clients.one, background_index=True)
    reader = FileTier(root_dir=clients.two, background_index=True)
    try:
        source = _region(len(keys))
        for i, key in enumerate(keys):
            source[i * BLOCK : (i + 1) * BLOCK] = block_content(key, BLOCK)
        stored = CompletionQueue()
        blocks = [(key, source[i * BLOCK : (i + 1) * BLOCK]) for i, key in enumerate(keys)]
        writer.submit_store(BlockJob(1, writer.namespace(CONFIG), blocks), stored)
        assert _wait_job(stored) == [KeyStatus.DONE] * len(keys)

        namespace = reader.namespace(CONFIG)
        deadline = time.monotonic() + 10
        while (answers := reader.lookup(namespace, keys)) != [LookupResult.HIT] * len(keys):
            assert time.monotonic() < deadline, f"node 2's index never saw the blocks: {answers}"
            time.sleep(0.02)
        dest = _region(len(keys))
        loaded = CompletionQueue()
        reader.submit_load(
            BlockJob(2, namespace, [(key, dest[i * BLOCK : (i + 1) * BLOCK]) for i, key in enumerate(keys)]),
            loaded,
        )
        assert _wait_job(loaded) == [KeyStatus.DONE] * len(keys)
        assert bytes(dest) == bytes(source)
        assert writer.direct == reader.direct == probe_o_direct(clients.two)
    finally:
        writer.shutdown()
        reader.shutdown()


def test_a_block_missing_on_the_other_client_turns_into_a_hit_once_the_negative_ttl_expires(
    clients: TwoClients,
) -> None:
    key = block_key("ttl", 0)
    reader = FileTier(root_dir=clients.two, negative_ttl_s=0.3)
    try:
        namespace = reader.namespace(CONFIG)
        deadline = time.monotonic() + 5
        while reader.lookup(namespace, [key]) != [LookupResult.MISS]:
            assert time.monotonic() < deadline, "node 2 never settled the absent key as a MISS"
            time.sleep(0.01)
        one = namespace_for(clients.one, CONFIG)
        assert BlockFiles(direct=False).store(one.block_path(key), block_content(key, BLOCK)).ok
        deadline = time.monotonic() + 5
        while reader.lookup(namespace, [key]) != [LookupResult.HIT]:
            assert time.monotonic() < deadline, "node 2 still misses a block node 1 published"
            time.sleep(0.02)
    finally:
        reader.shutdown()


def _tagged(key: bytes, writer: int) -> bytes:
    """The block's bytes with the writer's number in its first byte: who won is visible in the file."""
    data = bytearray(block_content(key, BLOCK))
    data[0] = writer
    return bytes(data)


def test_writers_racing_on_two_clients_publish_each_block_exactly_once(clients: TwoClients) -> None:
    keys = [block_key("race", n) for n in range(48)]
    roots = (clients.one, clients.two)
    spaces = [namespace_for(root, CONFIG) for root in roots]
    ensure_namespace(spaces[0])
    files = [BlockFiles(direct=probe_o_direct(root)) for root in roots]
    outcomes: list[list[StoreStatus]] = [[], []]
    start = threading.Barrier(2, timeout=30)

    def write(writer: int) -> None:
        start.wait()
        for key in keys:
            stored = files[writer].store(spaces[writer].block_path(key), _tagged(key, writer))
            outcomes[writer].append(stored.status)

    threads = [threading.Thread(target=write, args=(w,)) for w in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for i, key in enumerate(keys):
        statuses = Counter((outcomes[0][i], outcomes[1][i]))
        assert statuses == Counter([StoreStatus.STORED, StoreStatus.ALREADY_PRESENT]), (key.hex(), statuses)
        winner = 0 if outcomes[0][i] is StoreStatus.STORED else 1
        for space in spaces:
            assert Path(space.block_path(key)).read_bytes() == _tagged(key, winner)
    leftovers = [p for p in Path(spaces[1].blocks_dir).rglob("*") if p.is_file() and p.suffix != ".bin"]
    assert leftovers == []


def test_a_load_racing_gc_on_the_other_client_is_a_clean_miss_never_wrong_bytes(clients: TwoClients) -> None:
    """Node 1 keeps evicting (the real capacity manager) and re-storing; node 2 keeps loading."""
    keys = [block_key("gc", n) for n in range(16)]
    one, two = namespace_for(clients.one, CONFIG), namespace_for(clients.two, CONFIG)
    ensure_namespace(one)
    writer, reader = (
        BlockFiles(direct=probe_o_direct(clients.one)),
        BlockFiles(direct=probe_o_direct(clients.two)),
    )
    manager = CapacityManager(
        clients.one,
        max_bytes=len(keys) * BLOCK,
        high_watermark=0.5,
        low_watermark=0.1,
        grace_s=0.0,
        watch_filesystem=False,
        scan_threads=1,
        clock=lambda: time.time() + 5,
    )
    stop, seen = threading.Event(), Counter[LoadStatus]()
    wrong: list[str] = []

    def load_forever() -> None:
        dest = _region(1)
        while not stop.is_set():
            for key in keys:
                result = reader.load(two.block_path(key), dest)
                seen[result.status] += 1
                if result.ok and bytes(dest) != block_content(key, BLOCK):
                    wrong.append(key.hex())

    loader = threading.Thread(target=load_forever)
    loader.start()
    evicted = 0
    try:
        for _ in range(6):
            for key in keys:
                assert writer.store(one.block_path(key), block_content(key, BLOCK)).ok
            evicted += manager.run_pass().eviction.files
    finally:
        stop.set()
        loader.join(30)
    assert wrong == []
    assert evicted >= 6 * len(keys) // 2, "GC did not evict"
    assert set(seen) <= {LoadStatus.OK, LoadStatus.MISSING}, seen
    assert seen[LoadStatus.OK] > 0 and seen[LoadStatus.MISSING] > 0, seen


def test_one_gc_leader_among_lock_file_electors_on_two_clients(clients: TwoClients) -> None:
    electors = [
        FileLockElector(root, f"node-{n}", retry_period_s=0.2)
        for n, root in enumerate((clients.one, clients.two))
    ]
    for elector in electors:
        elector.start()
    try:
        deadline = time.monotonic() + 10
        while sum(e.is_leader for e in electors) != 1:
            assert time.monotonic() < deadline, "no leader was elected"
            time.sleep(0.05)
        for _ in range(20):
            assert sum(e.is_leader for e in electors) == 1
            time.sleep(0.05)
        leader = next(e for e in electors if e.is_leader)
        leader.stop()
        other = next(e for e in electors if e is not leader)
        deadline = time.monotonic() + 15
        while not other.is_leader:
            assert time.monotonic() < deadline, "the other client never took over the GC lock"
            time.sleep(0.05)
    finally:
        for elector in electors:
            elector.stop()


def _keys_sharing_directories(pairs: int) -> list[tuple[bytes, bytes]]:
    """Pairs of keys in one prefix directory `<h[0:3]>` but different leaf directories `<h[3:5]>_g0`."""
    by_prefix: dict[str, list[bytes]] = {}
    found: list[tuple[bytes, bytes]] = []
    n = 0
    while len(found) < pairs:
        key, n = block_key("dirs", n), n + 1
        group = by_prefix.setdefault(key.hex()[:3], [])
        if group and group[0].hex()[3:5] != key.hex()[3:5] and len(group) == 1:
            found.append((group[0], key))
        group.append(key)
    return found


def test_two_clients_creating_the_same_new_directories_at_once_store_every_block(clients: TwoClients) -> None:
    """Each pair's two blocks make both clients mkdir the same prefix directory at the same moment."""
    pairs = _keys_sharing_directories(300)
    spaces = [namespace_for(root, CONFIG) for root in (clients.one, clients.two)]
    ensure_namespace(spaces[0])
    failures: list[str] = []
    start = threading.Barrier(2, timeout=30)

    def write(writer: int) -> None:
        files = BlockFiles(direct=False)
        start.wait()
        for pair in pairs:
            result = files.store(spaces[writer].block_path(pair[writer]), block_content(pair[writer], 16384))
            if not result.ok:
                failures.append(f"client {writer + 1}: {result.detail}")

    threads = [threading.Thread(target=write, args=(w,)) for w in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    for pair in pairs:
        for key in pair:
            assert Path(spaces[1].block_path(key)).read_bytes() == block_content(key, 16384)
