"""The dual-priority pool: exactly-once reports, priorities, store backlog, de-duplication, shutdown."""

import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tieredkv_agent.engine.jobs import BlockJob, CompletionQueue, JobKind, JobResult, JobState, KeyStatus
from tieredkv_agent.engine.pools import DualPriorityPool
from tieredkv_agent.store.naming import KvCacheGroup, RunConfig, make_offload_key, namespace_for

pytestmark = pytest.mark.unit

BLOCK = 4096
WAIT_S = 5.0


class GatedHandler:
    """Records which blocks ran, in order; blocks whose key is in `held` wait until `gate` opens."""

    def __init__(self, status: KeyStatus = KeyStatus.DONE) -> None:
        self.status = status
        self.gate = threading.Event()
        self.held: set[bytes] = set()
        self.ran: list[tuple[JobKind, bytes]] = []
        self.started = threading.Semaphore(0)
        self._lock = threading.Lock()

    def run_block(self, state: JobState, index: int) -> KeyStatus:
        key = state.keys[index]
        with self._lock:
            self.ran.append((state.kind, key))
        self.started.release()
        if key in self.held:
            self.gate.wait()
        return self.status

    def wait_started(self, count: int = 1) -> None:
        for _ in range(count):
            assert self.started.acquire(timeout=WAIT_S)


class Recorder:
    """A sink that keeps every result it gets (any thread)."""

    def __init__(self) -> None:
        self.results: list[JobResult] = []
        self._lock = threading.Lock()

    def __call__(self, result: JobResult) -> None:
        with self._lock:
            self.results.append(result)

    def ids(self) -> list[int]:
        with self._lock:
            return [result.job_id for result in self.results]


NS = namespace_for("/nonexistent/pool-tests", RunConfig("m", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0",)),)))
"""The handlers here do no I/O: paths only identify blocks."""


@pytest.fixture
def handler() -> Iterator[GatedHandler]:
    gated = GatedHandler()
    yield gated
    gated.gate.set()


def key(index: int) -> bytes:
    return make_offload_key(index.to_bytes(4, "big") * 8, 0)


def state_of(kind: JobKind, job_id: int, keys: list[bytes], sink: Recorder) -> JobState:
    buffer = memoryview(bytearray(BLOCK * len(keys)))
    blocks = [(k, buffer[i * BLOCK : (i + 1) * BLOCK]) for i, k in enumerate(keys)]
    job = BlockJob(job_id, NS, blocks)
    return JobState(kind, job, [NS.block_path(k) for k in keys], sink)


def submit(pool: DualPriorityPool, kind: JobKind, job_id: int, keys: list[bytes], sink: Recorder) -> bool:
    state = state_of(kind, job_id, keys, sink)
    return pool.submit(state, range(len(keys)))


def wait_for(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


def test_every_job_is_reported_exactly_once_under_concurrent_submitters() -> None:
    handler = GatedHandler()
    pool = DualPriorityPool(handler, read_threads=2, write_threads=2, max_store_backlog_bytes=1 << 30)
    sink = Recorder()
    submitted: list[int] = []

    def submitter(worker: int) -> None:
        rng = random.Random(worker)
        for n in range(60):
            job_id = worker * 1000 + n
            kind = rng.choice([JobKind.STORE, JobKind.LOAD])
            keys = [key(rng.randrange(40)) for _ in range(rng.randrange(1, 5))]
            submit(pool, kind, job_id, keys, sink)
            submitted.append(job_id)

    threads = [threading.Thread(target=submitter, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert pool.wait_idle(WAIT_S)
    assert sorted(sink.ids()) == sorted(submitted)
    assert all(len(r.statuses) == len(r.keys) and r.success for r in sink.results)
    pool.shutdown(1.0)
    assert sorted(sink.ids()) == sorted(submitted)


def test_the_blocks_of_one_job_run_in_parallel(handler: GatedHandler) -> None:
    handler.held = {key(0), key(1), key(2)}
    pool = DualPriorityPool(handler, read_threads=3, write_threads=0, max_store_backlog_bytes=1 << 30)
    sink = Recorder()
    submit(pool, JobKind.LOAD, 1, [key(0), key(1), key(2)], sink)
    handler.wait_started(3)
    assert sink.results == []
    handler.gate.set()
    assert pool.wait_idle(WAIT_S)
    assert sink.ids() == [1]
    pool.shutdown(1.0)


def test_reads_overtake_queued_writes(handler: GatedHandler) -> None:
    handler.held = {key(0)}
    pool = DualPriorityPool(handler, read_threads=1, write_threads=0, max_store_backlog_bytes=1 << 30)
    sink = Recorder()
    submit(pool, JobKind.STORE, 1, [key(0)], sink)
    handler.wait_started()
    for job_id in (2, 3, 4):
        submit(pool, JobKind.STORE, job_id, [key(job_id)], sink)
    submit(pool, JobKind.LOAD, 5, [key(5)], sink)
    handler.gate.set()
    assert pool.wait_idle(WAIT_S)
    assert [k for _, k in handler.ran] == [key(0), key(5), key(2), key(3), key(4)]
    pool.shutdown(1.0)


def test_a_write_priority_worker_takes_queued_stores_before_loads(handler: GatedHandler) -> None:
    handler.held = {key(0)}
    pool = DualPriorityPool(handler, read_threads=0, write_threads=1, max_store_backlog_bytes=1 << 30)
    sink = Recorder()
    submit(pool, JobKind.LOAD, 1, [key(0)], sink)
    handler.wait_started()
    submit(pool, JobKind.LOAD, 2, [key(2)], sink)
    submit(pool, JobKind.STORE, 3, [key(3)], sink)
    handler.gate.set()
    assert pool.wait_idle(WAIT_S)
    assert [k for _, k in handler.ran] == [key(0), key(3), key(2)]
    pool.shutdown(1.0)


def test_a_full_store_backlog_refuses_new_store_jobs_at_once_and_counts_them(handler: GatedHandler) -> None:
    handler.held = {key(0)}
    pool = DualPriorityPool(handler, read_threads=1, write_threads=0, max_store_backlog_bytes=3 * BLOCK)
    sink = Recorder()
    assert submit(pool, JobKind.STORE, 1, [key(0)], sink)
    handler.wait_started()
    assert submit(pool, JobKind.STORE, 2, [key(1), key(2)], sink)
    assert submit(pool, JobKind.STORE, 3, [key(3)], sink)
    started = time.monotonic()
    assert not submit(pool, JobKind.STORE, 4, [key(4), key(5)], sink)
    assert time.monotonic() - started < 0.5
    assert submit(pool, JobKind.LOAD, 5, [key(6)], sink), "loads are never refused"
    refused = [r for r in sink.results if r.job_id == 4]
    assert len(refused) == 1
    assert refused[0].statuses == (KeyStatus.REFUSED, KeyStatus.REFUSED)
    stats = pool.stats()
    assert (stats.refused_jobs, stats.refused_bytes, stats.queued_store_bytes) == (1, 2 * BLOCK, 3 * BLOCK)
    handler.gate.set()
    assert pool.wait_idle(WAIT_S)
    assert sorted(sink.ids()) == [1, 2, 3, 4, 5]
    pool.shutdown(1.0)


def test_a_store_job_larger_than_the_backlog_is_taken_when_the_queue_is_empty() -> None:
    pool = DualPriorityPool(GatedHandler(), read_threads=1, write_threads=1, max_store_backlog_bytes=BLOCK)
    sink = Recorder()
    assert submit(pool, JobKind.STORE, 1, [key(1), key(2), key(3)], sink)
    assert pool.wait_idle(WAIT_S)
    assert sink.results[0].success
    pool.shutdown(1.0)


def test_concurrent_stores_of_one_key_write_once_and_both_complete(handler: GatedHandler) -> None:
    handler.held = {key(7)}
    pool = DualPriorityPool(handler, read_threads=2, write_threads=2, max_store_backlog_bytes=1 << 30)
    first, second = Recorder(), Recorder()
    submit(pool, JobKind.STORE, 1, [key(7)], first)
    handler.wait_started()
    submit(pool, JobKind.STORE, 1, [key(8), key(7), key(8)], second)
    wait_for(lambda: len(handler.ran) == 2)
    handler.gate.set()
    assert pool.wait_idle(WAIT_S)
    assert sorted(k for _, k in handler.ran) == [key(7), key(8)]
    assert first.results[0].statuses == (KeyStatus.DONE,)
    assert second.results[0].statuses == (KeyStatus.DONE, KeyStatus.PRESENT, KeyStatus.PRESENT)
    assert pool.stats().deduplicated_blocks == 2
    pool.shutdown(1.0)


def test_a_failed_write_fails_its_duplicates_too() -> None:
    handler = GatedHandler(status=KeyStatus.FAILED)
    handler.held = {key(1)}
    pool = DualPriorityPool(handler, read_threads=1, write_threads=1, max_store_backlog_bytes=1 << 30)
    first, second = Recorder(), Recorder()
    submit(pool, JobKind.STORE, 1, [key(1)], first)
    handler.wait_started()
    submit(pool, JobKind.STORE, 2, [key(1)], second)
    handler.gate.set()
    assert pool.wait_idle(WAIT_S)
    assert first.results[0].statuses == second.results[0].statuses == (KeyStatus.FAILED,)
    pool.shutdown(1.0)


def test_shutdown_fails_pending_and_stuck_work_within_its_bound(handler: GatedHandler) -> None:
    handler.held = {key(0)}
    pool = DualPriorityPool(handler, read_threads=1, write_threads=0, max_store_backlog_bytes=1 << 30)
    sink = Recorder()
    submit(pool, JobKind.LOAD, 1, [key(0), key(1)], sink)
    handler.wait_started()
    submit(pool, JobKind.STORE, 2, [key(2)], sink)
    submit(pool, JobKind.LOAD, 3, [key(3)], sink)
    started = time.monotonic()
    assert pool.shutdown(0.2) == 1
    assert time.monotonic() - started < 1.0
    assert sorted(sink.ids()) == [1, 2, 3]
    assert all(set(r.statuses) == {KeyStatus.CANCELLED} for r in sink.results)
    handler.gate.set()
    time.sleep(0.05)
    assert sorted(sink.ids()) == [1, 2, 3], "the stuck block finishing later is not reported again"
    assert not submit(pool, JobKind.LOAD, 4, [key(4)], sink)
    assert sink.results[-1].statuses == (KeyStatus.CANCELLED,)


def test_a_handler_exception_fails_only_its_block() -> None:
    class Exploding(GatedHandler):
        def run_block(self, state: JobState, index: int) -> KeyStatus:
            if state.keys[index] == key(1):
                raise RuntimeError("boom")
            return KeyStatus.DONE

    pool = DualPriorityPool(Exploding(), read_threads=1, write_threads=1, max_store_backlog_bytes=1 << 30)
    queue = CompletionQueue()
    state = state_of(JobKind.LOAD, 9, [key(0), key(1)], Recorder())
    state.sink = queue
    pool.submit(state, [0, 1])
    result = queue.get(WAIT_S)
    assert result is not None
    assert result.statuses == (KeyStatus.DONE, KeyStatus.FAILED)
    assert result.successful_keys == [key(0)]
    assert not result.success
    assert result.transfer_bytes == BLOCK
    pool.shutdown(1.0)


def test_a_job_with_nothing_to_do_is_reported_before_submit_returns() -> None:
    pool = DualPriorityPool(GatedHandler(), read_threads=1, write_threads=0, max_store_backlog_bytes=1 << 30)
    sink = Recorder()
    state = state_of(JobKind.STORE, 1, [key(0)], sink)
    state.settle(0, KeyStatus.SKIPPED)
    assert pool.submit(state, [])
    assert [r.statuses for r in sink.results] == [(KeyStatus.SKIPPED,)]
    pool.shutdown(1.0)


def test_a_pool_needs_at_least_one_thread() -> None:
    with pytest.raises(ValueError, match="at least one"):
        DualPriorityPool(GatedHandler(), read_threads=0, write_threads=0, max_store_backlog_bytes=1)


def test_the_completion_queue_hands_results_over_in_order() -> None:
    queue = CompletionQueue()
    assert queue.get(0.01) is None
    for job_id in (1, 2, 3):
        queue(JobResult(job_id, JobKind.LOAD, (), (), 0, 0.0))
    assert len(queue) == 3
    first = queue.get(0.01)
    assert first is not None
    assert first.job_id == 1
    assert [r.job_id for r in queue.drain()] == [2, 3]
    assert queue.drain() == []


def test_a_cancelled_job_skips_its_queued_blocks_and_is_still_reported_once(handler: GatedHandler) -> None:
    pool = DualPriorityPool(handler, read_threads=1, write_threads=0, max_store_backlog_bytes=1 << 30)
    sink, cancelled = Recorder(), threading.Event()
    keys = [key(index) for index in range(6)]
    handler.held.add(keys[0])
    buffer = memoryview(bytearray(BLOCK * len(keys)))
    blocks = [(k, buffer[i * BLOCK : (i + 1) * BLOCK]) for i, k in enumerate(keys)]
    state = JobState(JobKind.LOAD, BlockJob(1, NS, blocks, cancelled), [NS.block_path(k) for k in keys], sink)
    pool.submit(state, range(len(keys)))
    handler.wait_started()
    cancelled.set()
    handler.gate.set()
    wait_for(lambda: sink.ids() == [1])
    statuses = sink.results[0].statuses
    assert statuses == (KeyStatus.DONE,) + (KeyStatus.CANCELLED,) * 5
    assert [ran_key for _, ran_key in handler.ran] == keys[:1]
    pool.shutdown(1.0)


def test_a_cancelled_store_still_writes_a_block_another_job_waits_for(handler: GatedHandler) -> None:
    pool = DualPriorityPool(handler, read_threads=0, write_threads=1, max_store_backlog_bytes=1 << 30)
    sink, cancelled = Recorder(), threading.Event()
    first, shared = key(100), key(101)
    handler.held.add(first)
    buffer = memoryview(bytearray(BLOCK * 2))
    blocks = [(first, buffer[:BLOCK]), (shared, buffer[BLOCK:])]
    paths = [NS.block_path(first), NS.block_path(shared)]
    pool.submit(JobState(JobKind.STORE, BlockJob(1, NS, blocks, cancelled), paths, sink), range(2))
    handler.wait_started()
    submit(pool, JobKind.STORE, 2, [shared], sink)
    cancelled.set()
    handler.gate.set()
    wait_for(lambda: sorted(sink.ids()) == [1, 2])
    by_id = {result.job_id: result.statuses for result in sink.results}
    assert by_id == {1: (KeyStatus.DONE, KeyStatus.DONE), 2: (KeyStatus.PRESENT,)}
    pool.shutdown(1.0)
