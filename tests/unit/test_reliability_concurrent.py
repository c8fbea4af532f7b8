"""8 processes storing and loading the same keys at once get exactly the stored bytes, or a clean miss.

Eight worker processes (multiprocessing, spawn context; `tests.unit.reliability_worker`) share one
volume on real files: four go through `BlockFiles` directly (loading alternately into an aligned mmap
and an unaligned bytearray, so both the in-place O_DIRECT and the bounce-buffer paths run), four through
`FileTier` jobs. All 8 load every key before anyone stores (barrier): each load must be MISSING. Then
each stores all 48 keys (256 KiB each, same bytes per key) in its own order, loading the key and two
random ones before every store, while the others do the same; then each loads every key.
"""

import multiprocessing
import queue
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.reliability_worker import (
    CONFIG,
    WorkerSpec,
    block_content,
    block_key,
    concurrent_worker,
    key_of_path,
)
from tieredkv_agent.store.naming import namespace_for

pytestmark = pytest.mark.unit

WORKERS = 8
TIER_WORKERS = 4
KEYS = 48
BLOCK = 256 * 1024
RESULT_TIMEOUT_S = 120.0
LABEL = "concurrent"


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "volume"
    root.mkdir()
    yield root
    shutil.rmtree(root, ignore_errors=True)


def run_workers(volume: Path) -> list[dict[str, Any]]:
    """Start the 8 workers, collect their reports; every worker is reaped whatever happens."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=concurrent_worker,
            args=(WorkerSpec(i, str(volume), LABEL, KEYS, BLOCK, i < TIER_WORKERS), barrier, results),
            name=f"reliability-worker-{i}",
        )
        for i in range(WORKERS)
    ]
    reports: list[dict[str, Any]] = []
    try:
        for worker in workers:
            worker.start()
        for _ in workers:
            try:
                reports.append(results.get(timeout=RESULT_TIMEOUT_S))
            except queue.Empty:
                pytest.fail(f"only {len(reports)} of {WORKERS} workers reported within {RESULT_TIMEOUT_S} s")
        for worker in workers:
            worker.join(timeout=30)
        assert [worker.exitcode for worker in workers] == [0] * WORKERS
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=10)
        results.close()
        results.join_thread()
    return reports


def test_eight_processes_storing_and_loading_the_same_keys_see_only_exact_bytes_or_clean_misses(
    volume: Path,
) -> None:
    reports = run_workers(volume)
    assert [error for report in reports for error in report["errors"]] == []
    assert sorted(report["index"] for report in reports) == list(range(WORKERS))
    assert Counter(report["mode"] for report in reports) == {"tier": TIER_WORKERS, "blockfiles": 4}
    assert all(report["early_missing"] == KEYS for report in reports), (
        "a load before any store was not MISSING"
    )
    assert all(report["final_ok"] == KEYS for report in reports)
    assert all(report["racing_ok"] + report["racing_missing"] == 3 * KEYS for report in reports)

    stored = Counter(key for report in reports for key in report["stored"])
    keys = [block_key(LABEL, n) for n in range(KEYS)]
    assert set(stored) == {key.hex() for key in keys}, "every key was stored by some worker"
    assert all(count == 1 for count in stored.values()), (
        f"a block was published twice: {stored.most_common(3)}"
    )
    for report in reports:
        assert len(report["stored"]) + report["already_present"] == KEYS

    namespace = namespace_for(volume, CONFIG)
    files = [path for path in Path(namespace.blocks_dir).rglob("*") if path.is_file()]
    assert [path for path in files if not path.name.endswith(".bin")] == [], "temp or stray files left"
    assert sorted(key_of_path(path) for path in files) == sorted(keys), "exactly one file per key"
    for path in files:
        data = path.read_bytes()
        assert data == block_content(key_of_path(path), BLOCK), f"{path}: wrong or short bytes"
