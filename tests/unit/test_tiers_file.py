"""The file tier end to end on real files: bytes round-trip, per-key failures, lookups, admission."""

import errno
import mmap
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tieredkv_agent.engine.index import LookupResult
from tieredkv_agent.engine.jobs import BlockJob, CompletionQueue, JobResult, KeyStatus
from tieredkv_agent.store.blockio import FileOps
from tieredkv_agent.store.naming import KvCacheGroup, Namespace, RunConfig, make_offload_key
from tieredkv_agent.tiers.file import FileTier

pytestmark = pytest.mark.unit

BLOCK = 16 * 1024
WAIT_S = 10.0
CONFIG = RunConfig("org/model", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0", "l1")),))


class FailingOps(FileOps):
    """Real files, except that writes or reads of the named block files fail with EIO.

    It also counts writes and can hold every write until `gate` opens.
    """

    def __init__(self) -> None:
        self.bad_writes: set[str] = set()
        self.bad_reads: set[str] = set()
        self.writes = 0
        self.writing = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self._paths: dict[int, str] = {}

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        fd = super().open(path, flags, mode)
        self._paths[fd] = path.rsplit("_", 1)[0] if path.endswith(".tmp") else path
        return fd

    def write(self, fd: int, data: memoryview) -> int:
        self.writes += 1
        self.writing.set()
        self.gate.wait()
        if self._paths.get(fd) in self.bad_writes:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return super().write(fd, data)

    def preadv(self, fd: int, buffers: list[memoryview], offset: int) -> int:
        if self._paths.get(fd) in self.bad_reads:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return super().preadv(fd, buffers, offset)


@pytest.fixture
def ops() -> FailingOps:
    return FailingOps()


@pytest.fixture
def tier(tmp_path: Path, ops: FailingOps) -> Iterator[FileTier]:
    made = FileTier(root_dir=tmp_path / "volume", ops=ops, negative_ttl_s=60.0)
    yield made
    made.shutdown(2.0)


@pytest.fixture
def namespace(tier: FileTier) -> Namespace:
    return tier.namespace(CONFIG)


def key(index: int) -> bytes:
    return make_offload_key(index.to_bytes(4, "big") * 8, 0)


def content(k: bytes) -> bytes:
    return random.Random(k).randbytes(BLOCK)


def region(blocks: int) -> memoryview:
    return memoryview(mmap.mmap(-1, blocks * BLOCK))


def slot(view: memoryview, index: int) -> memoryview:
    return view[index * BLOCK : (index + 1) * BLOCK]


def run_store(tier: FileTier, namespace: Namespace, keys: list[bytes], job_id: int = 1) -> JobResult:
    source = region(len(keys))
    for index, k in enumerate(keys):
        slot(source, index)[:] = content(k)
    queue = CompletionQueue()
    tier.submit_store(BlockJob(job_id, namespace, [(k, slot(source, i)) for i, k in enumerate(keys)]), queue)
    result = queue.get(WAIT_S)
    assert result is not None
    return result


def run_load(
    tier: FileTier, namespace: Namespace, keys: list[bytes], job_id: int = 2
) -> tuple[JobResult, memoryview]:
    dest = region(len(keys))
    queue = CompletionQueue()
    tier.submit_load(BlockJob(job_id, namespace, [(k, slot(dest, i)) for i, k in enumerate(keys)]), queue)
    result = queue.get(WAIT_S)
    assert result is not None
    return result, dest


def settle_lookup(tier: FileTier, namespace: Namespace, keys: list[bytes]) -> list[LookupResult]:
    """Ask until no answer is RETRY (the index's stat thread runs in the background)."""
    for _ in range(1000):
        answers = tier.lookup(namespace, keys)
        if LookupResult.RETRY not in answers:
            return answers
        threading.Event().wait(0.005)
    raise AssertionError("lookups stayed RETRY")


def test_stored_blocks_load_back_byte_identical_and_become_hits(tier: FileTier, namespace: Namespace) -> None:
    keys = [key(i) for i in range(6)]
    stored = run_store(tier, namespace, keys)
    assert stored.statuses == (KeyStatus.DONE,) * 6
    assert stored.transfer_bytes == 6 * BLOCK
    assert tier.lookup(namespace, keys) == [LookupResult.HIT] * 6
    loaded, dest = run_load(tier, namespace, keys)
    assert loaded.success
    assert [bytes(slot(dest, i)) for i in range(6)] == [content(k) for k in keys]
    assert Path(namespace.block_path(keys[0])).stat().st_size == BLOCK


def test_a_second_store_of_known_blocks_needs_no_io(tier: FileTier, namespace: Namespace) -> None:
    run_store(tier, namespace, [key(1)])
    again = run_store(tier, namespace, [key(1)], job_id=3)
    assert again.statuses == (KeyStatus.PRESENT,)
    assert tier.stats().stores_known_present == 1


def test_a_write_error_fails_only_that_key(tier: FileTier, namespace: Namespace, ops: FailingOps) -> None:
    ops.bad_writes.add(namespace.block_path(key(2)))
    result = run_store(tier, namespace, [key(1), key(2), key(3)])
    assert result.statuses == (KeyStatus.DONE, KeyStatus.FAILED, KeyStatus.DONE)
    assert not result.success
    assert result.successful_keys == [key(1), key(3)]
    assert not Path(namespace.block_path(key(2))).exists()
    assert list(Path(namespace.blocks_dir).rglob("*.tmp")) == []


def test_a_read_error_fails_that_key_and_turns_its_lookup_into_a_miss(
    tier: FileTier, namespace: Namespace, ops: FailingOps
) -> None:
    run_store(tier, namespace, [key(1), key(2)])
    ops.bad_reads.add(namespace.block_path(key(2)))
    result, _ = run_load(tier, namespace, [key(1), key(2)])
    assert result.key_success == (True, False)
    assert result.statuses[1] is KeyStatus.FAILED
    assert tier.lookup(namespace, [key(1), key(2)]) == [LookupResult.HIT, LookupResult.MISS]
    assert Path(namespace.block_path(key(2))).exists(), "a transient read error keeps the file"


def test_loading_a_missing_block_reports_missing(tier: FileTier, namespace: Namespace) -> None:
    result, _ = run_load(tier, namespace, [key(9)])
    assert result.statuses == (KeyStatus.MISSING,)
    assert tier.lookup(namespace, [key(9)]) == [LookupResult.MISS]


def test_unknown_keys_are_retry_then_settle_from_the_volume(tier: FileTier, namespace: Namespace) -> None:
    other = FileTier(root_dir=tier.root_dir, read_threads=1, write_threads=1)
    try:
        run_store(other, other.namespace(CONFIG), [key(5)])  # "another node"
    finally:
        other.shutdown(1.0)
    assert tier.lookup(namespace, [key(5), key(6)]) == [LookupResult.RETRY] * 2
    assert settle_lookup(tier, namespace, [key(5), key(6)]) == [LookupResult.HIT, LookupResult.MISS]


def test_two_concurrent_stores_of_one_key_write_the_file_once(
    tier: FileTier, namespace: Namespace, ops: FailingOps
) -> None:
    source = region(1)
    slot(source, 0)[:] = content(key(4))
    first, second = CompletionQueue(), CompletionQueue()
    ops.writes = 0  # the O_DIRECT probe at startup wrote once
    ops.writing.clear()
    ops.gate.clear()
    tier.submit_store(BlockJob(1, namespace, [(key(4), slot(source, 0))]), first)
    assert ops.writing.wait(WAIT_S)
    tier.submit_store(BlockJob(1, namespace, [(key(4), slot(source, 0))]), second)
    ops.gate.set()
    results = first.get(WAIT_S), second.get(WAIT_S)
    assert [r.statuses if r else None for r in results] == [(KeyStatus.DONE,), (KeyStatus.PRESENT,)]
    assert ops.writes == 1
    assert tier.stats().pool.deduplicated_blocks == 1


def test_eight_threads_storing_and_loading_the_same_keys_get_exactly_the_stored_bytes(
    tier: FileTier, namespace: Namespace
) -> None:
    keys = [key(i) for i in range(12)]
    failures: list[str] = []

    def client(seed: int) -> None:
        order = random.Random(seed).sample(keys, len(keys))
        if not run_store(tier, namespace, order, job_id=seed).success:
            failures.append(f"store {seed}")
        loaded, dest = run_load(tier, namespace, order, job_id=100 + seed)
        if not loaded.success or any(bytes(slot(dest, i)) != content(k) for i, k in enumerate(order)):
            failures.append(f"load {seed}")

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(list(Path(namespace.blocks_dir).rglob("*.bin"))) == len(keys)
    assert list(Path(namespace.blocks_dir).rglob("*.tmp")) == []


def test_admission_skips_stores_until_enough_requests_asked(tmp_path: Path) -> None:
    tier = FileTier(root_dir=tmp_path, store_threshold=2, read_threads=1, write_threads=1)
    try:
        namespace = tier.namespace(CONFIG)
        for _ in range(3):
            tier.lookup(namespace, [key(1), key(2)], request_id="req-a")
        first = run_store(tier, namespace, [key(1), key(2)])
        assert first.statuses == (KeyStatus.SKIPPED, KeyStatus.SKIPPED)
        tier.lookup(namespace, [key(1)], request_id="req-b")
        second = run_store(tier, namespace, [key(1), key(2)], job_id=2)
        assert second.statuses == (KeyStatus.DONE, KeyStatus.SKIPPED)
        stats = tier.stats()
        assert (stats.stores_skipped, stats.store_bytes_skipped) == (3, 3 * BLOCK)
        assert not Path(namespace.block_path(key(2))).exists()
    finally:
        tier.shutdown(1.0)


def test_malformed_jobs_are_rejected_before_anything_is_queued(tier: FileTier, namespace: Namespace) -> None:
    queue = CompletionQueue()
    readonly = memoryview(bytes(BLOCK))
    with pytest.raises(ValueError, match="writable"):
        tier.submit_load(BlockJob(1, namespace, [(key(1), readonly)]), queue)
    with pytest.raises(ValueError, match="non-empty"):
        tier.submit_store(BlockJob(2, namespace, [(key(1), readonly[:0])]), queue)
    assert tier.drain(1.0)
    assert len(queue) == 0


def test_after_shutdown_new_jobs_are_reported_cancelled(tmp_path: Path) -> None:
    tier = FileTier(root_dir=tmp_path, read_threads=1, write_threads=1)
    namespace = tier.namespace(CONFIG)
    tier.shutdown(1.0)
    result, _ = run_load(tier, namespace, [key(1)])
    assert result.statuses == (KeyStatus.CANCELLED,)
