"""`touch_on_hit`: a load hit makes a block recently used, at most once a minute per file."""

import os
import threading
from pathlib import Path

import pytest

from tieredkv_agent.capacity import touch
from tieredkv_agent.capacity.touch import TouchThrottle

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def aged_file(path: Path, age_s: float = 3600) -> str:
    path.write_bytes(b"block")
    mtime = path.stat().st_mtime - age_s
    os.utime(path, (mtime, mtime))
    return str(path)


def test_a_hit_refreshes_the_mtime_once_per_interval(tmp_path: Path) -> None:
    clock = Clock()
    throttle = TouchThrottle(interval_s=60, clock=clock)
    path = aged_file(tmp_path / "a.bin")
    before = Path(path).stat().st_mtime
    assert throttle.touch_on_hit(path)
    assert Path(path).stat().st_mtime > before + 3000
    os.utime(path, (before, before))
    clock.now += 59
    assert not throttle.touch_on_hit(path)
    assert Path(path).stat().st_mtime == before
    clock.now += 1
    assert throttle.touch_on_hit(path)
    assert (throttle.touched_total, throttle.throttled_total) == (2, 1)


def test_the_throttle_map_stays_bounded(tmp_path: Path) -> None:
    throttle = TouchThrottle(interval_s=60, max_entries=3, clock=Clock())
    for n in range(10):
        assert throttle.touch_on_hit(aged_file(tmp_path / f"{n}.bin"))
    assert len(throttle) == 3


def test_entries_past_the_interval_are_forgotten(tmp_path: Path) -> None:
    clock = Clock()
    throttle = TouchThrottle(interval_s=60, clock=clock)
    for n in range(5):
        throttle.touch_on_hit(aged_file(tmp_path / f"{n}.bin"))
    clock.now += 61
    throttle.touch_on_hit(aged_file(tmp_path / "late.bin"))
    assert len(throttle) == 1


def test_a_block_evicted_before_its_touch_is_skipped_without_an_error(tmp_path: Path) -> None:
    throttle = TouchThrottle(clock=Clock())
    assert not throttle.touch_on_hit(str(tmp_path / "gone.bin"))
    assert (throttle.touched_total, throttle.errors_total, len(throttle)) == (0, 0, 0)


def test_a_volume_that_refuses_the_touch_counts_an_error_and_the_load_goes_on(tmp_path: Path) -> None:
    def read_only(path: str) -> None:
        raise OSError(30, "Read-only file system", path)

    throttle = TouchThrottle(clock=Clock(), utime=read_only)
    assert not throttle.touch_on_hit(aged_file(tmp_path / "a.bin"))
    assert throttle.errors_total == 1


def test_concurrent_io_threads_touch_each_file_exactly_once_per_interval(tmp_path: Path) -> None:
    throttle = TouchThrottle(interval_s=60, clock=Clock())
    paths = [aged_file(tmp_path / f"{n}.bin") for n in range(50)]
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        for _ in range(5):
            for path in paths:
                throttle.touch_on_hit(path)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert throttle.touched_total == 50
    assert throttle.throttled_total == 8 * 5 * 50 - 50


def test_the_module_level_touch_on_hit_uses_the_process_wide_throttle(tmp_path: Path) -> None:
    path = aged_file(tmp_path / "a.bin")
    assert touch.touch_on_hit(path)
    assert not touch.touch_on_hit(path)
