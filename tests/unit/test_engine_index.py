"""The lookup index: HIT / MISS / RETRY transitions, negative TTL, scans and bounds, on real files."""

import errno
import time
from pathlib import Path

import pytest

from tieredkv_agent.engine.index import LookupIndex, LookupResult
from tieredkv_agent.store.blockio import BlockFiles, FileOps
from tieredkv_agent.store.naming import KvCacheGroup, Namespace, RunConfig, make_offload_key, namespace_for

pytestmark = pytest.mark.unit

HIT, MISS, RETRY = LookupResult.HIT, LookupResult.MISS, LookupResult.RETRY
TTL = 1.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingOps(FileOps):
    """Real files; counts existence checks and can make them fail."""

    def __init__(self) -> None:
        self.exists_calls = 0
        self.fail = False

    def exists(self, path: str) -> bool:
        self.exists_calls += 1
        if self.fail:
            raise OSError(errno.EIO, "stat failed")
        return super().exists(path)


@pytest.fixture
def namespace(tmp_path: Path) -> Namespace:
    return namespace_for(tmp_path, RunConfig("m", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0",)),)))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ops() -> CountingOps:
    return CountingOps()


@pytest.fixture
def index(clock: FakeClock, ops: CountingOps) -> LookupIndex:
    return LookupIndex(ops=ops, negative_ttl_s=TTL, clock=clock, background=False)


def key(index: int, group: int = 0) -> bytes:
    return make_offload_key(index.to_bytes(4, "big") * 8, group)


def write_block(namespace: Namespace, k: bytes) -> None:
    assert BlockFiles(direct=False).store(namespace.block_path(k), b"x" * 4096).ok


def test_an_unknown_key_is_retry_until_a_stat_answers_it(index: LookupIndex, namespace: Namespace) -> None:
    write_block(namespace, key(1))
    assert index.lookup(namespace, [key(1), key(2)]) == [RETRY, RETRY]
    assert index.lookup(namespace, [key(1), key(2)]) == [RETRY, RETRY]
    assert index.run_pending() == 2, "a key asked twice is statted once"
    assert index.lookup(namespace, [key(1), key(2)]) == [HIT, MISS]


def test_answers_from_memory_need_no_syscall(
    index: LookupIndex, namespace: Namespace, ops: CountingOps
) -> None:
    index.add(namespace, [key(1)])
    index.mark_missing(namespace, [key(2)])
    for _ in range(100):
        assert index.lookup(namespace, [key(1), key(2)]) == [HIT, MISS]
    assert ops.exists_calls == 0
    stats = index.stats()
    assert (stats.hits, stats.misses, stats.retries) == (100, 100, 0)


def test_a_miss_expires_after_the_negative_ttl_so_other_nodes_blocks_appear(
    index: LookupIndex, namespace: Namespace, clock: FakeClock
) -> None:
    index.lookup(namespace, [key(1)])
    index.run_pending()
    assert index.lookup(namespace, [key(1)]) == [MISS]
    write_block(namespace, key(1))  # another node writes it
    clock.now += TTL / 2
    assert index.lookup(namespace, [key(1)]) == [MISS]
    clock.now += TTL
    assert index.lookup(namespace, [key(1)]) == [RETRY]
    index.run_pending()
    assert index.lookup(namespace, [key(1)]) == [HIT]


def test_the_first_answer_after_a_stat_is_a_miss_even_if_the_ttl_already_ran_out(
    index: LookupIndex, namespace: Namespace, clock: FakeClock
) -> None:
    index.lookup(namespace, [key(1)])
    index.run_pending()
    clock.now += 10 * TTL
    assert index.lookup(namespace, [key(1)]) == [MISS]
    assert index.lookup(namespace, [key(1)]) == [RETRY]


def test_a_failed_load_turns_a_hit_into_a_miss(index: LookupIndex, namespace: Namespace) -> None:
    index.add(namespace, [key(1)])
    index.mark_missing(namespace, [key(1)])
    assert index.lookup(namespace, [key(1)]) == [MISS]
    assert index.stats().positive_keys == 0


def test_our_own_store_after_a_miss_makes_it_a_hit(index: LookupIndex, namespace: Namespace) -> None:
    index.lookup(namespace, [key(1)])
    index.run_pending()
    index.add(namespace, [key(1)])
    assert index.lookup(namespace, [key(1)]) == [HIT]
    assert index.stats().negative_keys == 0


def test_discarded_keys_are_statted_again(index: LookupIndex, namespace: Namespace) -> None:
    index.add(namespace, [key(1)])
    index.discard(namespace, [key(1)])
    assert index.lookup(namespace, [key(1)]) == [RETRY]


def test_a_scan_finds_blocks_written_by_others_without_stats(
    index: LookupIndex, namespace: Namespace, ops: CountingOps
) -> None:
    for k in (key(1), key(2), key(3, group=2)):
        write_block(namespace, k)
    Path(namespace.block_path(key(4)) + "_123.tmp").write_bytes(b"partial")
    assert index.scan(namespace) == 3
    assert index.lookup(namespace, [key(1), key(2), key(3, group=2)]) == [HIT, HIT, HIT]
    assert index.lookup(namespace, [key(3, group=0), key(4)]) == [RETRY, RETRY]
    assert ops.exists_calls == 0


def test_namespaces_are_separate(index: LookupIndex, namespace: Namespace, tmp_path: Path) -> None:
    other = namespace_for(tmp_path, RunConfig("other", 16, 1, "bfloat16", ()))
    index.add(namespace, [key(1)])
    assert index.lookup(other, [key(1)]) == [RETRY]


def test_the_positive_set_is_bounded(clock: FakeClock, namespace: Namespace) -> None:
    index = LookupIndex(max_keys=10, clock=clock, background=False)
    index.add(namespace, [key(i) for i in range(25)])
    stats = index.stats()
    assert (stats.positive_keys, stats.evicted_positive) == (10, 15)
    assert index.lookup(namespace, [key(i) for i in range(25)]).count(HIT) == 10


def test_expired_negatives_are_swept_and_the_negative_map_is_bounded(
    clock: FakeClock, namespace: Namespace
) -> None:
    index = LookupIndex(negative_ttl_s=TTL, max_negative_keys=1500, clock=clock, background=False)
    index.mark_missing(namespace, [key(i) for i in range(1000)])
    clock.now += 2 * TTL
    index.mark_missing(namespace, [key(i) for i in range(1000, 3000)])
    assert index.stats().negative_keys <= 1500


def test_the_stat_queue_is_bounded_and_overflow_stays_retry(clock: FakeClock, namespace: Namespace) -> None:
    index = LookupIndex(max_pending=2, clock=clock, background=False)
    assert index.lookup(namespace, [key(i) for i in range(5)]) == [RETRY] * 5
    assert index.stats().stat_overflows == 3
    assert index.run_pending() == 2
    assert index.lookup(namespace, [key(i) for i in range(5)])[:2] == [MISS, MISS]


def test_a_failing_stat_leaves_the_key_unknown(
    index: LookupIndex, namespace: Namespace, ops: CountingOps
) -> None:
    ops.fail = True
    index.lookup(namespace, [key(1)])
    index.run_pending()
    ops.fail = False
    assert index.lookup(namespace, [key(1)]) == [RETRY]
    index.run_pending()
    assert index.lookup(namespace, [key(1)]) == [MISS]


def test_background_threads_answer_and_scan_on_their_own(namespace: Namespace) -> None:
    write_block(namespace, key(1))
    index = LookupIndex(negative_ttl_s=30.0)
    try:
        deadline = time.monotonic() + 5.0
        while index.lookup(namespace, [key(1), key(2)]) != [HIT, MISS]:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert index.stats().namespaces == 1
    finally:
        index.close()
