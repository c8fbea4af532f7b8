"""The incremental scan: unchanged leaf directories are not read again, changed ones are, and what the
index remembers never makes the GC delete a block it should keep."""

import os
from pathlib import Path

import numpy as np
import pytest

from tests.unit.test_capacity_scan import NOW, cutoffs, namespace, put_block
from tieredkv_agent.capacity.evict import evict, plan_eviction
from tieredkv_agent.capacity.manager import CapacityManager
from tieredkv_agent.capacity.scan import scan_volume
from tieredkv_agent.capacity.scan_index import BlocksIndex, histogram, leaf_key, leaf_path
from tieredkv_agent.capacity.scan_model import MtimeHistogram

pytestmark = pytest.mark.unit

TRUST_ALL = -(10**12)
"""A ctime margin that trusts even a leaf written a moment ago (the default distrusts the last 2 s)."""


def test_a_second_scan_reads_no_unchanged_leaf_and_sees_the_same_volume(tmp_path: Path) -> None:
    ns = namespace(tmp_path)
    for n in range(40):
        put_block(ns, n, size=100 + n, age_s=3600 + n)
    first = scan_volume(tmp_path, cutoffs(), ctime_margin_ns=TRUST_ALL)
    again = scan_volume(tmp_path, cutoffs(), index=first.index, ctime_margin_ns=TRUST_ALL)
    assert first.leaves_read == again.leaves_skipped > 0 and again.leaves_read == 0
    assert (again.files, again.bytes) == (first.files, first.bytes) == (40, sum(range(100, 140)))
    assert again.evictable.buckets == first.evictable.buckets


def test_leaves_written_within_the_margin_are_read_again(tmp_path: Path) -> None:
    put_block(namespace(tmp_path), 1)
    first = scan_volume(tmp_path, cutoffs())
    again = scan_volume(tmp_path, cutoffs(), index=first.index)
    assert again.leaves_read == 1 and again.leaves_skipped == 0


def test_added_rewritten_and_deleted_blocks_are_seen_by_the_next_scan(tmp_path: Path) -> None:
    ns = namespace(tmp_path)
    paths = [put_block(ns, n, size=1000) for n in range(20)]
    index = scan_volume(tmp_path, cutoffs(), ctime_margin_ns=TRUST_ALL).index
    paths[0].unlink()
    tmp = paths[1].with_name(paths[1].name + "_1.tmp")
    tmp.write_bytes(b"\0" * 5000)
    os.utime(tmp, (NOW - 3600, NOW - 3600))
    tmp.rename(paths[1])  # a store replacing the block: a rename, as the agent and vLLM write
    put_block(ns, 99, size=7)
    after = scan_volume(tmp_path, cutoffs(), index=index, ctime_margin_ns=TRUST_ALL)
    assert after.files == 20 and after.bytes == 18 * 1000 + 5000 + 7
    assert after.leaves_read <= 3


def test_a_removed_leaf_directory_is_forgotten(tmp_path: Path) -> None:
    ns = namespace(tmp_path)
    paths = [put_block(ns, n) for n in range(10)]
    index = scan_volume(tmp_path, cutoffs(), ctime_margin_ns=TRUST_ALL).index
    for path in paths[:3]:
        path.unlink()
        path.parent.rmdir()
    after = scan_volume(tmp_path, cutoffs(), index=index, ctime_margin_ns=TRUST_ALL)
    assert after.files == 7


def test_a_block_touched_after_it_was_recorded_survives_and_its_leaf_is_read_again(tmp_path: Path) -> None:
    ns = namespace(tmp_path)
    old, other = put_block(ns, 1, age_s=7200), put_block(ns, 2, age_s=3600)
    index = scan_volume(tmp_path, cutoffs(), ctime_margin_ns=TRUST_ALL).index
    os.utime(old, None)  # a load hit refreshes the mtime in place: the leaf's ctime does not change
    scan = scan_volume(tmp_path, cutoffs(), index=index, ctime_margin_ns=TRUST_ALL)
    assert scan.leaves_read == 0  # so the index still holds the old mtime ...
    plan = plan_eviction(scan.evictable, 2000, scan.cutoffs.evictable_ns)
    leaves = index.candidate_leaves(scan.root, plan.evictable_ns)
    result = evict(plan, scan.prefix_dirs, leaves=leaves)
    assert old.exists() and not other.exists() and result.files == 1  # ... but the walk re-stats
    index.invalidate(leaves)
    third = scan_volume(tmp_path, cutoffs(), index=index, ctime_margin_ns=TRUST_ALL)
    assert third.leaves_read == 1 and third.files == 1 and third.evictable.files == 0


def test_a_manager_pass_reuses_its_index_and_starts_over_every_full_scan_every_passes(
    tmp_path: Path,
) -> None:
    put_block(namespace(tmp_path), 1)
    manager = CapacityManager(tmp_path, max_bytes=10**9, watch_filesystem=False, full_scan_every=2)
    indexes = [manager.run_pass().scan.index for _ in range(4)]
    assert indexes[0] is indexes[1] and indexes[1] is not indexes[2] and indexes[2] is indexes[3]
    assert manager.run_pass(dry_run=True).scan.index is not indexes[3]


def test_eviction_walks_only_the_leaves_that_hold_old_enough_blocks(tmp_path: Path) -> None:
    ns = namespace(tmp_path)
    for n in range(50):
        put_block(ns, n, age_s=86400 if n < 5 else 600)
    scan = scan_volume(tmp_path, cutoffs())
    plan = plan_eviction(scan.evictable, 5 * 1000, scan.cutoffs.evictable_ns)
    leaves = scan.index.candidate_leaves(scan.root, plan.evictable_ns - 3000 * 10**9)
    assert sum(len(names) for names in leaves.values()) == 5
    result = evict(plan, scan.prefix_dirs, leaves=leaves)
    assert result.files == 5
    assert scan_volume(tmp_path, cutoffs()).files == 45


def test_leaf_keys_round_trip_to_their_directory_names() -> None:
    key = leaf_key("a0f", "3c_g2")
    assert leaf_path("/v/m_0123456789ab_r0", key) == ("/v/m_0123456789ab_r0/a0f", "3c_g2")


def test_the_index_compacts_dead_records_and_keeps_the_live_ones() -> None:
    blocks = BlocksIndex()
    keys = np.arange(1000, dtype=np.int64)
    ones = np.ones(1000, np.int64)
    for rounds in range(1, 200):
        mtimes = np.full(1000, rounds, np.int64)
        blocks.replace(keys, ones, ones, mtimes=mtimes, sizes=ones * rounds, pass_no=rounds)
        blocks.finish(rounds)
    usage = blocks.usage()
    assert usage.files == 1000 and usage.bytes == 199_000 and blocks.used < 200_000


def test_the_numpy_histogram_matches_adding_the_blocks_one_by_one() -> None:
    rng = np.random.default_rng(3)
    mtimes = rng.integers(10**18, 10**18 + 10**15, 5000, dtype=np.int64)
    sizes = rng.integers(0, 4096, 5000, dtype=np.int64)
    fast = histogram(mtimes, sizes)
    slow = MtimeHistogram(width_ns=fast.width_ns)
    for mtime, size in zip(mtimes.tolist(), sizes.tolist(), strict=True):
        slow.add(mtime, size)
    assert fast.buckets == slow.buckets and len(fast.buckets) <= 1 << 16
