"""GC passes on real files under tmp_path: watermarks, LRU by mtime, grace, temps, dirs, unknown files."""

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tieredkv_agent.capacity.evict import evict, plan_eviction
from tieredkv_agent.capacity.manager import CapacityManager, measure_pressure
from tieredkv_agent.capacity.scan import BUCKET_NS, Cutoffs, MtimeHistogram, scan_volume
from tieredkv_agent.store.blockio import BlockFiles, FileOps, LoadStatus
from tieredkv_agent.store.naming import KvCacheGroup, Namespace, RunConfig, ensure_namespace, namespace_for

pytestmark = pytest.mark.unit

NOW = time.time()


def namespace(root: Path, model: str = "org/model") -> Namespace:
    ns = namespace_for(root, RunConfig(model, 16, 1, "bfloat16", (KvCacheGroup(16, ("layer.0",)),)))
    ensure_namespace(ns)
    return ns


def put_block(ns: Namespace, n: int, *, size: int = 1000, age_s: float = 3600, data: bytes = b"") -> Path:
    path = Path(ns.block_path(hashlib.sha256(str(n).encode()).digest() + b"\0\0\0\0"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data or b"\0" * size)
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


def manager(root: Path, **overrides: object) -> CapacityManager:
    knobs: dict[str, object] = {
        "max_bytes": 10_000,
        "high_watermark": 0.8,
        "low_watermark": 0.5,
        "grace_s": 60.0,
        "temp_timeout_s": 600.0,
        "watch_filesystem": False,
    }
    knobs.update(overrides)
    return CapacityManager(root, clock=lambda: NOW, **knobs)  # type: ignore[arg-type]


def surviving(paths: list[Path]) -> list[Path]:
    return [p for p in paths if p.exists()]


def test_a_volume_over_its_high_watermark_is_brought_just_under_the_low_watermark(tmp_path: Path) -> None:
    ns = namespace(tmp_path)
    blocks = [put_block(ns, n, age_s=3600 + n) for n in range(20)]  # 20 KB against 10 KB
    gc = manager(tmp_path)
    report = gc.run_pass()
    left = sum(p.stat().st_size for p in surviving(blocks))
    assert 5_000 - 1_000 < left <= 5_000
    assert report.pressure.trigger == "max_bytes"
    assert (gc.evicted_files_total, gc.evicted_bytes_total) == (15, 15_000)
    assert (gc.usage_files, gc.usage_bytes) == (5, 5_000)


def test_a_volume_under_its_high_watermark_is_left_alone(tmp_path: Path) -> None:
    ns = namespace(tmp_path)
    blocks = [put_block(ns, n) for n in range(8)]
    report = manager(tmp_path).run_pass()
    assert surviving(blocks) == blocks
    assert report.pressure.need_bytes == 0 and report.eviction.files == 0


def test_blocks_are_evicted_least_recently_used_first_by_mtime(tmp_path: Path) -> None:
    ns = namespace(tmp_path)
    ages = [7200, 100, 5000, 300, 86400, 2000, 999, 4000, 150, 60000, 3000, 800]
    blocks = {age: put_block(ns, n, age_s=age) for n, age in enumerate(ages)}  # 12 KB
    manager(tmp_path).run_pass()
    kept = sorted(age for age, path in blocks.items() if path.exists())
    assert kept == sorted(ages)[:5]


def test_blocks_younger_than_the_grace_period_are_never_evicted_even_above_the_watermark(
    tmp_path: Path,
) -> None:
    ns = namespace(tmp_path)
    young = [put_block(ns, n, age_s=30) for n in range(15)]
    old = [put_block(ns, 100 + n, age_s=3600) for n in range(3)]
    gc = manager(tmp_path, grace_s=60.0)
    report = gc.run_pass()
    assert surviving(young) == young and surviving(old) == []
    assert report.plan.shortfall_bytes == 18_000 - 5_000 - 3_000
    assert gc.shortfall_bytes == report.plan.shortfall_bytes


def test_a_block_loaded_after_the_scan_survives_the_eviction_planned_before(tmp_path: Path) -> None:
    ns = namespace(tmp_path)
    blocks = [put_block(ns, n, age_s=3600 + n) for n in range(10)]
    cut = Cutoffs.at(NOW, 60, 600)
    scan = scan_volume(tmp_path, cut)
    plan = plan_eviction(scan.evictable, scan.bytes, cut.evictable_ns)  # everything
    os.utime(blocks[4])  # a load hit touches it meanwhile
    result = evict(plan, scan.prefix_dirs)
    assert surviving(blocks) == [blocks[4]]
    assert result.files == 9


def test_orphaned_temp_files_older_than_the_timeout_are_swept_and_younger_ones_kept(tmp_path: Path) -> None:
    ns = namespace(tmp_path)
    block = put_block(ns, 1)
    temps = {}
    for name, age in (("old", 900), ("young", 30), ("probe", 900)):
        temp = tmp_path / ".o_direct_probe_7.tmp" if name == "probe" else Path(f"{block}_{age}1234.tmp")
        temp.write_bytes(b"partial")
        os.utime(temp, (NOW - age, NOW - age))
        temps[name] = temp
    gc = manager(tmp_path, temp_timeout_s=600.0)
    gc.run_pass()
    assert not temps["old"].exists() and not temps["probe"].exists()
    assert temps["young"].exists() and block.exists()
    assert (gc.swept_temp_files_total, gc.swept_temp_bytes_total) == (2, 14)


def test_empty_hash_directories_are_removed_but_namespace_dirs_and_config_json_stay(tmp_path: Path) -> None:
    ns = namespace(tmp_path)
    leaf = ns.blocks_dir / "abc" / "de_g0"
    leaf.mkdir(parents=True)
    for d in (leaf, leaf.parent):
        os.utime(d, (NOW - 3600, NOW - 3600))
    fresh = ns.blocks_dir / "fed" / "cb_g0"
    fresh.mkdir(parents=True)  # a writer may be about to publish into it
    gc = manager(tmp_path)
    gc.run_pass()
    assert not leaf.parent.exists() and fresh.is_dir()
    assert (ns.config_dir / "config.json").is_file() and ns.blocks_dir.is_dir()
    assert gc.removed_dirs_total == 2


def test_directories_emptied_by_eviction_are_removed_in_the_same_pass(tmp_path: Path) -> None:
    ns = namespace(tmp_path)
    blocks = [put_block(ns, n) for n in range(20)]
    manager(tmp_path, max_bytes=1_000, high_watermark=0.5, low_watermark=0.1).run_pass()
    assert surviving(blocks) == []
    assert list(ns.blocks_dir.iterdir()) == []


def test_unknown_files_are_reported_and_never_deleted(tmp_path: Path) -> None:
    ns = namespace(tmp_path)
    block = put_block(ns, 1)
    strays = [
        tmp_path / "backup.tar",
        ns.config_dir / "old.bin",
        block.parent / "UPPER.bin",
        block.parent / "x.tmp",
    ]
    for stray in strays:
        stray.write_bytes(b"\0" * 5000)
        os.utime(stray, (NOW - 86400, NOW - 86400))
    (block.parent / "alias.bin").symlink_to(block)
    gc = manager(tmp_path, max_bytes=100, high_watermark=0.5, low_watermark=0.1)
    report = gc.run_pass()
    assert not block.exists()
    assert all(stray.exists() for stray in strays) and (block.parent / "alias.bin").is_symlink()
    assert (ns.config_dir / "config.json").is_file()
    assert report.scan.unknown_count == gc.unknown_files == 5


def test_a_dry_run_reports_what_would_be_evicted_and_deletes_nothing(tmp_path: Path) -> None:
    ns = namespace(tmp_path)
    blocks = [put_block(ns, n, age_s=3600 + 10 * n) for n in range(20)]
    temp = Path(f"{blocks[0]}_1.tmp")
    temp.write_bytes(b"x")
    os.utime(temp, (NOW - 900, NOW - 900))
    gc = manager(tmp_path)
    report = gc.run_pass(dry_run=True)
    assert surviving(blocks) == blocks and temp.exists()
    assert sorted(report.eviction.paths) == sorted(str(p) for p in blocks[5:])
    assert (report.eviction.files, report.sweep.temp_files) == (15, 1)
    assert gc.passes_total == 0 and gc.evicted_files_total == 0


def test_a_manager_that_is_not_the_leader_refuses_to_delete_but_may_preview(tmp_path: Path) -> None:
    class Follower:
        is_leader = False

    gc = CapacityManager(tmp_path, elector=Follower(), watch_filesystem=False)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="leader"):
        gc.run_pass()
    assert gc.run_pass(dry_run=True).dry_run


class GcBetweenOpenAndRead(FileOps):
    """Runs `gc` once, after the loader opened the block file and before it reads it."""

    def __init__(self, gc: Callable[[], object]) -> None:
        self.gc: Callable[[], object] | None = gc

    def preadv(self, fd: int, buffers: list[memoryview], offset: int) -> int:
        if self.gc is not None:
            gc, self.gc = self.gc, None
            gc()
        return super().preadv(fd, buffers, offset)


def test_evicting_a_block_mid_load_is_safe_and_a_later_load_misses(tmp_path: Path) -> None:
    ns = namespace(tmp_path)
    payload = os.urandom(4096)
    block = put_block(ns, 1, data=payload)
    gc = manager(tmp_path, max_bytes=1_000, high_watermark=0.5, low_watermark=0.1)
    files = BlockFiles(direct=False, ops=GcBetweenOpenAndRead(gc.run_pass))
    dest = bytearray(4096)
    assert files.load(str(block), dest).ok
    assert bytes(dest) == payload and not block.exists()
    assert gc.evicted_files_total == 1
    assert files.load(str(block), dest).status is LoadStatus.MISSING


def test_the_plan_takes_whole_old_buckets_and_a_byte_budget_from_the_cutoff_bucket() -> None:
    histogram = MtimeHistogram()
    for second, size in ((10, 100), (10, 100), (20, 300), (30, 50)):
        histogram.add(second * BUCKET_NS, size)
    plan = plan_eviction(histogram, 350, evictable_ns=40 * BUCKET_NS)
    assert (plan.cutoff_bucket, plan.cutoff_budget, plan.shortfall_bytes) == (20, 150, 0)
    short = plan_eviction(histogram, 1000, evictable_ns=40 * BUCKET_NS)
    assert (short.expected_files, short.expected_bytes, short.shortfall_bytes) == (4, 550, 450)
    assert plan_eviction(histogram, 0, evictable_ns=40 * BUCKET_NS).empty


def test_filesystem_pressure_triggers_eviction_even_under_max_bytes() -> None:
    calm = measure_pressure(500, 1000, (50, 100), high=0.85, low=0.75)
    full = measure_pressure(500, 1000, (95, 100), high=0.85, low=0.75)
    both = measure_pressure(950, 1000, (90, 100), high=0.85, low=0.75)
    assert (calm.need_bytes, calm.trigger) == (0, "")
    assert (full.need_bytes, full.trigger) == (20, "filesystem")
    assert (both.need_bytes, both.trigger) == (200, "max_bytes")
