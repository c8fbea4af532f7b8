"""The node RAM tier: the LRU pool alone, then layered over a real file tier (write-through, fallback)."""

from __future__ import annotations

import hashlib
import mmap
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tieredkv_agent.copy.engine import CopyEngine
from tieredkv_agent.copy.lanes import CopyBatch, Dependency, StreamSignal
from tieredkv_agent.copy.spaces import BlockSpace
from tieredkv_agent.engine.index import LookupResult
from tieredkv_agent.engine.jobs import BlockJob, CompletionQueue, JobKind, JobResult, KeyStatus
from tieredkv_agent.store.blockio import FileOps
from tieredkv_agent.store.naming import KvCacheGroup, Namespace, RunConfig, make_offload_key
from tieredkv_agent.tiers.file import FileTier
from tieredkv_agent.tiers.kernel_copy import KernelCopier
from tieredkv_agent.tiers.layered import LayeredTier
from tieredkv_agent.tiers.ram import RamPool

pytestmark = pytest.mark.unit

BLOCK = 4097
WAIT_S = 10.0
POISON = 0xAB
CONFIG = RunConfig("org/model", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0",)),))
SPACE = Path("/blocks")


def key(index: int, salt: str = "") -> bytes:
    return make_offload_key(hashlib.sha256(f"{salt}{index}".encode()).digest(), 0)


def content(k: bytes, size: int = BLOCK) -> bytes:
    return random.Random(k).randbytes(size)


class CountingOps(FileOps):
    """Real files; counts block reads so tests can prove a load touched no file."""

    def __init__(self) -> None:
        self.reads = 0

    def preadv(self, fd: int, buffers: list[memoryview], offset: int) -> int:
        self.reads += 1
        return super().preadv(fd, buffers, offset)


class Region:
    """An instance's region: an anonymous mmap cut into slot views, as the socket server hands them out."""

    def __init__(self, slots: int, size: int = BLOCK) -> None:
        self.size = size
        self.map = mmap.mmap(-1, slots * size)
        self.map.write(bytes([POISON]) * (slots * size))
        self.base = memoryview(self.map)

    def view(self, slot: int) -> memoryview:
        return self.base[slot * self.size : (slot + 1) * self.size]

    def fill(self, slot: int, data: bytes) -> None:
        self.map[slot * self.size : (slot + 1) * self.size] = data

    def slot(self, slot: int) -> bytes:
        return self.map[slot * self.size : (slot + 1) * self.size]


def run(tier: LayeredTier | FileTier, kind: JobKind, job: BlockJob) -> JobResult:
    done = CompletionQueue()
    (tier.submit_store if kind is JobKind.STORE else tier.submit_load)(job, done)
    result = done.get(WAIT_S)
    assert result is not None, "job was not reported"
    return result


def job(
    namespace: Namespace, keys: Sequence[bytes], region: Region, slots: Sequence[int], job_id: int = 1
) -> BlockJob:
    return BlockJob(job_id, namespace, [(k, region.view(s)) for k, s in zip(keys, slots, strict=True)])


@pytest.fixture
def ops() -> CountingOps:
    return CountingOps()


@pytest.fixture
def tier(tmp_path: Path, ops: CountingOps) -> Iterator[LayeredTier]:
    files = FileTier(root_dir=tmp_path / "volume", ops=ops, negative_ttl_s=60.0, direct=False)
    made = LayeredTier(ram=RamPool(16 * BLOCK), lower=files, engine=CopyEngine(cpu_threads=2))
    yield made
    made.shutdown(2.0)


@pytest.fixture
def namespace(tier: LayeredTier) -> Namespace:
    return tier.namespace(CONFIG)


# -- the pool alone ---------------------------------------------------------------------------------------


def test_the_least_recently_used_block_is_evicted_first() -> None:
    pool = RamPool(3 * BLOCK, block_bytes=BLOCK, pin=False)
    keys = [key(index) for index in range(4)]
    pool.reserve(SPACE, keys[:3])
    pool.commit(SPACE, keys[:3], source="store")
    assert pool.acquire(SPACE, keys[:1]) != [None]  # k0 is now the newest
    pool.release(SPACE, keys[:1])
    assert pool.reserve(SPACE, keys[3:]) != [None]
    pool.commit(SPACE, keys[3:], source="store")
    assert pool.contains(SPACE, keys) == [True, False, True, True]
    assert pool.stats().evictions == 1


def test_blocks_being_read_or_written_are_never_evicted() -> None:
    pool = RamPool(2 * BLOCK, block_bytes=BLOCK, pin=False)
    reading, writing, newcomer = key(0), key(1), key(2)
    pool.reserve(SPACE, [reading, writing])
    pool.commit(SPACE, [reading], source="store")
    assert pool.acquire(SPACE, [reading]) != [None]
    assert pool.reserve(SPACE, [newcomer]) == [None]
    assert pool.stats().no_room == 1
    pool.release(SPACE, [reading])
    assert pool.reserve(SPACE, [newcomer]) != [None]


def test_a_key_being_written_is_neither_found_nor_reserved_twice() -> None:
    pool = RamPool(4 * BLOCK, block_bytes=BLOCK, pin=False)
    k = key(0)
    [slot] = pool.reserve(SPACE, [k, k])[:1]
    assert slot is not None and pool.reserve(SPACE, [k]) == [None]
    assert pool.contains(SPACE, [k]) == [False] and pool.acquire(SPACE, [k]) == [None]
    pool.abort(SPACE, [k], failed=True)
    assert pool.stats().used_slots == 0 and pool.stats().copy_failures == 1
    assert pool.reserve(SPACE, [k]) == [slot]


def test_the_same_key_in_two_namespaces_is_two_entries() -> None:
    pool = RamPool(4 * BLOCK, block_bytes=BLOCK, pin=False)
    k = key(0)
    pool.reserve(SPACE, [k])
    pool.commit(SPACE, [k], source="store")
    assert pool.contains(Path("/other"), [k]) == [False]


def test_the_first_block_size_sizes_the_pool_and_other_sizes_bypass_it() -> None:
    pool = RamPool(10 * BLOCK + 5)
    assert pool.stats().slots == 0
    assert pool.accepts(BLOCK) and pool.stats().slots == 10 and pool.space.block_bytes == BLOCK
    assert not pool.accepts(4096, 3) and pool.stats().bypassed == 3
    assert not pool.space.pinned  # no CUDA here: plain memory


def test_a_pool_too_small_for_one_block_turns_itself_off() -> None:
    pool = RamPool(100)
    assert not pool.accepts(BLOCK) and not pool.accepts(50)


# -- layered over the file tier ---------------------------------------------------------------------------


def test_a_stored_block_loads_back_from_ram_without_reading_a_file(
    tier: LayeredTier, namespace: Namespace, ops: CountingOps
) -> None:
    keys = [key(index) for index in range(4)]
    writer, reader = Region(8), Region(8)
    for slot, k in enumerate(keys):
        writer.fill(slot + 2, content(k))
    stored = run(tier, JobKind.STORE, job(namespace, keys, writer, [2, 3, 4, 5]))
    assert stored.statuses == (KeyStatus.DONE,) * 4
    assert all(Path(namespace.block_path(k)).read_bytes() == content(k) for k in keys)  # written through
    loaded = run(tier, JobKind.LOAD, job(namespace, keys, reader, [7, 0, 3, 1], job_id=2))
    assert loaded.statuses == (KeyStatus.DONE,) * 4 and loaded.transfer_bytes == 4 * BLOCK
    assert [reader.slot(slot) for slot in (7, 0, 3, 1)] == [content(k) for k in keys]
    assert all(reader.slot(slot) == bytes([POISON]) * BLOCK for slot in (2, 4, 5, 6))
    stats = tier.stats()
    assert ops.reads == 0 and stats.ram.load_hits == 4 and stats.ram.cached_from_stores == 4
    assert not any(kind is JobKind.LOAD for kind, _ in stats.file.pool.settled_blocks)


def test_lookups_answer_from_ram_first_and_ask_the_file_tier_for_the_rest(
    tier: LayeredTier, namespace: Namespace
) -> None:
    stored, unknown = key(0), key(1)
    region = Region(1)
    region.fill(0, content(stored))
    run(tier, JobKind.STORE, job(namespace, [stored], region, [0]))
    answers = tier.lookup(namespace, [stored, unknown], "request-1")
    assert answers[0] is LookupResult.HIT and answers[1] is not LookupResult.HIT
    ram = tier.stats().ram
    assert (ram.lookup_hits, ram.lookup_misses) == (1, 1)


def test_a_block_only_on_the_volume_is_read_once_then_served_from_ram(
    tmp_path: Path, ops: CountingOps
) -> None:
    keys = [key(index, "volume") for index in range(3)]
    first = FileTier(root_dir=tmp_path / "volume", direct=False)
    region = Region(3)
    for slot, k in enumerate(keys):
        region.fill(slot, content(k))
    assert run(first, JobKind.STORE, job(first.namespace(CONFIG), keys, region, [0, 1, 2])).success
    first.shutdown(2.0)
    files = FileTier(root_dir=tmp_path / "volume", ops=ops, direct=False)
    tier = LayeredTier(ram=RamPool(8 * BLOCK), lower=files)
    try:
        namespace = tier.namespace(CONFIG)
        for attempt in range(2):
            reader = Region(3)
            result = run(tier, JobKind.LOAD, job(namespace, keys, reader, [2, 1, 0], job_id=attempt))
            assert result.success and [reader.slot(s) for s in (2, 1, 0)] == [content(k) for k in keys]
        ram = tier.stats().ram
        assert ops.reads == 3 and ram.cached_from_loads == 3
        assert (ram.load_misses, ram.load_hits) == (3, 3)
    finally:
        tier.shutdown(2.0)


def test_a_load_mixing_ram_volume_and_missing_keys_reports_each_key_in_order(
    tier: LayeredTier, namespace: Namespace, ops: CountingOps
) -> None:
    in_ram, on_volume, nowhere = key(0, "ram"), key(1, "volume"), key(2, "nowhere")
    region = Region(1)
    region.fill(0, content(in_ram))
    run(tier, JobKind.STORE, job(namespace, [in_ram], region, [0]))
    path = Path(namespace.block_path(on_volume))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content(on_volume))
    reader = Region(3)
    result = run(tier, JobKind.LOAD, job(namespace, [in_ram, on_volume, nowhere], reader, [0, 1, 2]))
    assert result.statuses == (KeyStatus.DONE, KeyStatus.DONE, KeyStatus.MISSING)
    assert result.transfer_bytes == 2 * BLOCK
    assert [reader.slot(0), reader.slot(1)] == [content(in_ram), content(on_volume)]
    assert reader.slot(2) == bytes([POISON]) * BLOCK
    assert ops.reads == 1


def test_a_store_reports_the_file_tiers_statuses(tier: LayeredTier, namespace: Namespace) -> None:
    k = key(0)
    region = Region(1)
    region.fill(0, content(k))
    assert run(tier, JobKind.STORE, job(namespace, [k], region, [0])).statuses == (KeyStatus.DONE,)
    again = run(tier, JobKind.STORE, job(namespace, [k], region, [0], job_id=2))
    assert again.statuses == (KeyStatus.PRESENT,) and again.transfer_bytes == 0


class FailingLoadsEngine(CopyEngine):
    """A real engine whose copies out of the RAM pool fail (an out-of-range source index)."""

    pool: BlockSpace | None = None

    def submit(
        self,
        src: BlockSpace,
        src_blocks: Sequence[int],
        dst: BlockSpace,
        dst_blocks: Sequence[int],
        *,
        after: Dependency | None = None,
        signal: StreamSignal | None = None,
        on_done: Callable[[CopyBatch], None] | None = None,
    ) -> CopyBatch:
        if src is self.pool:
            src_blocks = [src.num_blocks] * len(src_blocks)
        return super().submit(src, src_blocks, dst, dst_blocks, on_done=on_done)


def test_a_failed_copy_out_of_ram_is_served_from_the_files(tmp_path: Path, ops: CountingOps) -> None:
    engine = FailingLoadsEngine(cpu_threads=1)
    pool = RamPool(4 * BLOCK, block_bytes=BLOCK, pin=False)
    engine.pool = pool.space
    tier = LayeredTier(
        ram=pool, lower=FileTier(root_dir=tmp_path / "v", ops=ops, direct=False), engine=engine, kernel=False
    )
    try:
        namespace, keys = tier.namespace(CONFIG), [key(0), key(1)]
        region = Region(2)
        for slot, k in enumerate(keys):
            region.fill(slot, content(k))
        run(tier, JobKind.STORE, job(namespace, keys, region, [0, 1]))
        reader = Region(2)
        result = run(tier, JobKind.LOAD, job(namespace, keys, reader, [1, 0], job_id=2))
        assert result.success and [reader.slot(1), reader.slot(0)] == [content(k) for k in keys]
        assert ops.reads == 2 and tier.stats().ram.copy_failures == 2
    finally:
        tier.shutdown(2.0)


def test_blocks_of_another_size_bypass_the_pool(tier: LayeredTier, namespace: Namespace) -> None:
    first, other = key(0), key(1)
    run(tier, JobKind.STORE, job(namespace, [first], Region(1), [0]))
    small = Region(1, size=4096)
    result = run(tier, JobKind.STORE, job(namespace, [other], small, [0]))
    assert result.success and tier.ram.contains(namespace.blocks_dir, [other]) == [False]
    assert tier.stats().ram.bypassed >= 1


def test_many_threads_storing_and_loading_get_every_job_reported_exactly_once(
    tmp_path: Path,
) -> None:
    files = FileTier(root_dir=tmp_path / "volume", direct=False, negative_ttl_s=60.0)
    tier = LayeredTier(ram=RamPool(6 * BLOCK), lower=files, engine=CopyEngine(cpu_threads=2))
    namespace = tier.namespace(CONFIG)
    keys = [key(index, "shared") for index in range(10)]
    reports: dict[tuple[int, int], int] = {}
    lock, errors = threading.Lock(), []

    def worker(number: int) -> None:
        rng, region = random.Random(number), Region(4)
        for step in range(12):
            picked = rng.sample(keys, 3)
            kind = JobKind.STORE if step % 2 == 0 else JobKind.LOAD
            for slot, k in enumerate(picked):
                region.fill(slot, content(k) if kind is JobKind.STORE else bytes([POISON]) * BLOCK)
            result = run(tier, kind, job(namespace, picked, region, [0, 1, 2], job_id=step))
            with lock:
                reports[number, step] = reports.get((number, step), 0) + 1
            for slot, (k, status) in enumerate(zip(picked, result.statuses, strict=True)):
                if kind is JobKind.LOAD and status is KeyStatus.DONE and region.slot(slot) != content(k):
                    errors.append((number, step, slot))

    threads = [threading.Thread(target=worker, args=(number,)) for number in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S * 3)
        assert tier.drain(WAIT_S)
        assert errors == [] and len(reports) == 48 and set(reports.values()) == {1}
        ram = tier.stats().ram
        assert ram.evictions > 0 and ram.load_hits > 0
    finally:
        tier.shutdown(2.0)


def test_after_shutdown_new_jobs_are_reported_cancelled(tier: LayeredTier, namespace: Namespace) -> None:
    tier.shutdown(2.0)
    result = run(tier, JobKind.LOAD, job(namespace, [key(0)], Region(1), [0]))
    assert result.statuses == (KeyStatus.CANCELLED,)


def test_a_malformed_job_raises_and_reports_nothing(tier: LayeredTier, namespace: Namespace) -> None:
    done = CompletionQueue()
    with pytest.raises(ValueError, match="writable"):
        tier.submit_load(BlockJob(1, namespace, [(key(0), memoryview(bytes(BLOCK)))]), done)
    assert done.get(0.05) is None and tier.drain(1.0)


class StoppingKernel(KernelCopier):
    """Copies out of RAM stop after the first block, as when the client truncated its region there."""

    def copy(self, call: str, local: Sequence[int], remote: Sequence[int], block_bytes: int) -> int:
        if call == "process_vm_writev":
            return super().copy(call, local[:1], remote[:1], block_bytes)
        return super().copy(call, local, remote, block_bytes)


def test_kernel_copies_serve_ram_hits_and_blocks_a_short_copy_missed_come_from_the_files(
    tmp_path: Path, ops: CountingOps
) -> None:
    pool = RamPool(4 * BLOCK, block_bytes=BLOCK, pin=False)
    files = FileTier(root_dir=tmp_path / "v", ops=ops, direct=False)
    tier = LayeredTier(ram=pool, lower=files, kernel=StoppingKernel())
    try:
        assert tier.kernel_only_views
        namespace, keys = tier.namespace(CONFIG), [key(0), key(1)]
        region = Region(2)
        for slot, k in enumerate(keys):
            region.fill(slot, content(k))
        run(tier, JobKind.STORE, job(namespace, keys, region, [0, 1]))
        assert tier.ram.contains(namespace.blocks_dir, keys) == [True, True]
        reader = Region(2)
        result = run(tier, JobKind.LOAD, job(namespace, keys, reader, [1, 0], job_id=2))
        assert result.success and [reader.slot(1), reader.slot(0)] == [content(k) for k in keys]
        assert ops.reads == 1 and tier.stats().ram.copy_failures == 1  # one from RAM, one from its file
    finally:
        tier.shutdown(2.0)
