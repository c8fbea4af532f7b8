"""A volume that really fills up (a size-limited tmpfs, as root) is brought back under its watermark."""

import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tieredkv_agent.capacity.manager import CapacityManager, filesystem_usage
from tieredkv_agent.store.blockio import BlockFiles
from tieredkv_agent.store.naming import (
    KvCacheGroup,
    RunConfig,
    ensure_namespace,
    make_offload_key,
    namespace_for,
)

pytestmark = pytest.mark.unit

BLOCK = 64 * 1024


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted for this test only (skipped where mounting is not permitted)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a size-limited tmpfs needs root and mount(8)")
    mnt = tmp_path / "vol"
    mnt.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(mnt)]
    done = subprocess.run(mount, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def fill(volume: Path) -> tuple[BlockFiles, list[str]]:
    """Publish 64 KiB blocks through the real store path until the filesystem says ENOSPC."""
    ns = namespace_for(volume, RunConfig("org/model", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0",)),)))
    ensure_namespace(ns)
    files = BlockFiles.for_volume(volume)
    payload = os.urandom(BLOCK)
    stored: list[str] = []
    for n in range(1000):
        path = ns.block_path(make_offload_key(n.to_bytes(4, "big") * 8, 0))
        result = files.store(path, payload)
        if not result.ok:  # ENOSPC, or EIO for the short write that hit the end of the space
            assert result.errno in (errno.ENOSPC, errno.EIO), result
            return files, stored
        stored.append(path)
    pytest.fail("the 8 MiB volume never filled up")


def test_a_volume_that_fills_up_is_brought_back_under_the_low_watermark(small_volume: Path) -> None:
    files, stored = fill(small_volume)
    now = time.time()
    for age, path in enumerate(reversed(stored)):  # the first stored is the least recently used
        os.utime(path, (now - 3600 - age, now - 3600 - age))
    used, size = filesystem_usage(str(small_volume))
    assert used / size > 0.95
    gc = CapacityManager(small_volume, high_watermark=0.9, low_watermark=0.6, grace_s=60)
    report = gc.run_pass()
    used, size = filesystem_usage(str(small_volume))
    assert used / size <= 0.6
    assert report.pressure.trigger == "filesystem"
    assert not Path(stored[0]).exists() and Path(stored[-1]).exists()
    assert files.store(f"{stored[-1]}.again.bin", os.urandom(BLOCK)).ok


def test_a_full_volume_of_young_blocks_keeps_them_and_reports_the_shortfall(small_volume: Path) -> None:
    _, stored = fill(small_volume)
    gc = CapacityManager(small_volume, high_watermark=0.9, low_watermark=0.6, grace_s=60)
    report = gc.run_pass()
    assert all(Path(p).exists() for p in stored)
    assert report.eviction.files == 0 and gc.shortfall_bytes > 0
