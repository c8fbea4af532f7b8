"""The read-only scan and `inspect_volume`, on real files in the real layout under tmp_path."""

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from tieredkv_agent.capacity import layout
from tieredkv_agent.capacity.inspection import inspect_volume
from tieredkv_agent.capacity.scan import BUCKET_NS, Cutoffs, MtimeHistogram, scan_volume
from tieredkv_agent.store.naming import (
    KvCacheGroup,
    Namespace,
    RunConfig,
    ensure_namespace,
    make_offload_key,
    namespace_for,
)

pytestmark = pytest.mark.unit

NOW = time.time()


def namespace(root: Path, model: str = "org/model") -> Namespace:
    ns = namespace_for(root, RunConfig(model, 16, 1, "bfloat16", (KvCacheGroup(16, ("layer.0",)),)))
    ensure_namespace(ns)
    return ns


def put_block(ns: Namespace, n: int, *, size: int = 1000, age_s: float = 3600, group: int = 0) -> Path:
    path = Path(ns.block_path(make_offload_key(hashlib.sha256(str(n).encode()).digest(), group)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


def cutoffs(grace_s: float = 60, temp_timeout_s: float = 600) -> Cutoffs:
    return Cutoffs.at(NOW, grace_s, temp_timeout_s)


@pytest.mark.parametrize("threads", [1, 4])
def test_usage_is_summed_per_namespace_over_all_its_block_files(tmp_path: Path, threads: int) -> None:
    a, b = namespace(tmp_path, "org/a"), namespace(tmp_path, "org/b")
    for n in range(50):
        put_block(a, n, size=100 + n, group=n % 2)
    for n in range(7):
        put_block(b, n, size=4096)
    result = scan_volume(tmp_path, cutoffs(), threads=threads)
    usage = result.usage
    assert (usage[a.config_dir.name].files, usage[a.config_dir.name].bytes) == (50, sum(range(100, 150)))
    assert (usage[b.config_dir.name].files, usage[b.config_dir.name].bytes) == (7, 7 * 4096)
    assert (result.files, result.bytes) == (57, sum(range(100, 150)) + 7 * 4096)
    assert result.config_dirs == {a.config_dir.name, b.config_dir.name}
    assert result.unknown_count == 0 and result.errors == []


def test_only_blocks_past_the_grace_period_are_counted_as_evictable(tmp_path: Path) -> None:
    ns = namespace(tmp_path)
    put_block(ns, 1, size=10, age_s=30)
    put_block(ns, 2, size=20, age_s=90)
    put_block(ns, 3, size=40, age_s=7200)
    result = scan_volume(tmp_path, cutoffs(grace_s=60))
    assert result.bytes == 70
    assert (result.evictable.files, result.evictable.bytes) == (2, 60)


def test_temp_files_count_apart_and_only_old_ones_are_orphans(tmp_path: Path) -> None:
    ns = namespace(tmp_path)
    block = put_block(ns, 1)
    for suffix, age in (("_111.tmp", 900), ("_222.tmp", 10)):
        temp = Path(f"{block}{suffix}")
        temp.write_bytes(b"x" * 5)
        os.utime(temp, (NOW - age, NOW - age))
    probe = tmp_path / ".o_direct_probe_99.tmp"
    probe.write_bytes(b"")
    os.utime(probe, (NOW - 900, NOW - 900))
    result = scan_volume(tmp_path, cutoffs(temp_timeout_s=600))
    usage = result.usage[ns.config_dir.name]
    assert (usage.files, usage.temp_files, usage.temp_bytes) == (1, 2, 10)
    assert sorted(result.old_temps) == sorted([f"{block}_111.tmp", str(probe)])


def test_entries_outside_the_layout_are_reported_as_unknown(tmp_path: Path) -> None:
    ns = namespace(tmp_path)
    block = put_block(ns, 1)
    strays = [
        tmp_path / "README",
        tmp_path / "lost+found",
        ns.config_dir / "notes.txt",
        ns.blocks_dir / "zzz",
        block.parent.parent / "stray.bin",
        block.parent / "UPPER.bin",
    ]
    for stray in strays:
        if stray.name in ("lost+found", "zzz"):
            stray.mkdir()
        else:
            stray.write_text("x")
    (block.parent / "link.bin").symlink_to(block)
    (tmp_path / layout.LOCK_FILE_NAME).write_text("me")
    result = scan_volume(tmp_path, cutoffs())
    assert sorted(result.unknown) == sorted(map(str, [*strays, block.parent / "link.bin"]))
    assert result.files == 1


def test_empty_hash_directories_past_the_grace_period_are_candidates_deepest_first(tmp_path: Path) -> None:
    ns = namespace(tmp_path)
    old_leaf = ns.blocks_dir / "abc" / "de_g0"
    new_leaf = ns.blocks_dir / "fff" / "00_g0"
    for leaf in (old_leaf, new_leaf):
        leaf.mkdir(parents=True)
    for d in (old_leaf, old_leaf.parent):
        os.utime(d, (NOW - 3600, NOW - 3600))
    result = scan_volume(tmp_path, cutoffs(grace_s=60))
    assert result.empty_dirs == [str(old_leaf), str(old_leaf.parent)]


def test_the_histogram_coarsens_instead_of_growing_past_its_bucket_limit() -> None:
    histogram = MtimeHistogram(max_buckets=8)
    for second in range(100):
        shard = MtimeHistogram()
        shard.add(second * BUCKET_NS, 10)
        histogram.merge(shard)
    assert len(histogram.buckets) <= 8
    assert (histogram.files, histogram.bytes) == (100, 1000)
    assert histogram.width_ns == 16 * BUCKET_NS


def test_inspect_reports_each_namespace_with_its_config_json(tmp_path: Path) -> None:
    good, orphan = namespace(tmp_path, "org/good"), namespace(tmp_path, "org/orphan")
    put_block(good, 1, size=300)
    put_block(orphan, 2, size=500)
    (orphan.config_dir / "config.json").write_text("{not json")
    report = inspect_volume(tmp_path)
    by_name = {ns.name: ns for ns in report.namespaces}
    assert by_name[good.config_dir.name].config == good.fields
    assert by_name[good.config_dir.name].blocks_dirs == [good.blocks_dir.name]
    assert by_name[good.config_dir.name].usage.bytes == 300
    assert by_name[orphan.config_dir.name].config is None
    assert "unreadable" in str(by_name[orphan.config_dir.name].config_error)
    assert (report.files, report.bytes) == (2, 800)
    json.dumps(report.as_dict())
