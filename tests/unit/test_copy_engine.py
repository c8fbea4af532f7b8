"""The copy engine on the CPU path: every byte of every block checked, bad batches refused, threads."""

from __future__ import annotations

import mmap
import threading
from collections.abc import Iterator

import pytest
import torch

from tests.unit.copy_cases import (
    PATTERNS,
    POISON,
    WAIT_S,
    check_blocks,
    fill_random,
    host_space,
    poison,
    run_bad_batch_then_good,
    run_pattern,
)
from tieredkv_agent.copy.engine import CopyEngine, lane_key
from tieredkv_agent.copy.lanes import CopyBatch
from tieredkv_agent.copy.plan import CopyError
from tieredkv_agent.copy.spaces import BlockSpace, views_space

pytestmark = pytest.mark.unit


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def engine(request: pytest.FixtureRequest) -> Iterator[CopyEngine]:
    made = CopyEngine(cpu_threads=request.param)
    yield made
    made.close()


@pytest.mark.parametrize("block_bytes", [1, 4097, (1 << 18) + 3])
@pytest.mark.parametrize("name", PATTERNS)
def test_gathered_blocks_match_their_sources_byte_for_byte(
    engine: CopyEngine, name: str, block_bytes: int
) -> None:
    run_pattern(engine, host_space, host_space, name, block_bytes)


def test_a_bad_index_fails_only_its_batch_and_names_the_index(engine: CopyEngine) -> None:
    run_bad_batch_then_good(engine, host_space, host_space)


def test_a_destination_named_twice_fails_the_batch_before_any_byte_moves(engine: CopyEngine) -> None:
    src, dst = host_space(4, 4097), host_space(4, 4097)
    data = fill_random(src, seed=1)
    poison(dst)
    batch = engine.submit(src, [0, 1, 2], dst, [3, 1, 3])
    assert batch.wait(WAIT_S) and batch.error is not None and "destination block 3" in batch.error
    check_blocks(dst, data, {})


def test_spaces_of_different_block_sizes_are_refused(engine: CopyEngine) -> None:
    batch = engine.submit(host_space(4, 4096), [0], host_space(4, 4097), [0])
    assert batch.done() and batch.error is not None and "block sizes differ" in batch.error
    with pytest.raises(CopyError, match="block sizes differ"):
        batch.result()


def test_an_empty_batch_completes_at_once(engine: CopyEngine) -> None:
    batch = engine.submit(host_space(1, 8), [], host_space(1, 8), [])
    assert batch.ok


def test_batches_of_one_lane_complete_in_submission_order(engine: CopyEngine) -> None:
    src, dst = host_space(64, 65536), host_space(64, 65536)
    fill_random(src, seed=2)
    order: list[int] = []
    batches = [
        engine.submit(src, [block], dst, [block], on_done=lambda batch: order.append(batch.batch_id))
        for block in range(64)
    ]
    assert engine.wait_idle(WAIT_S)
    assert order == [batch.batch_id for batch in batches]


def test_batches_without_a_callback_are_polled_oldest_first_and_only_once(engine: CopyEngine) -> None:
    src, dst = host_space(8, 4096), host_space(8, 4096)
    submitted = [engine.submit(src, [block], dst, [block]) for block in range(8)]
    assert engine.wait_idle(WAIT_S)
    polled = engine.poll()
    assert [batch.batch_id for batch in polled] == [batch.batch_id for batch in submitted]
    assert all(batch.ok for batch in polled) and engine.poll() == []


def test_several_threads_submitting_at_once_all_land_intact(engine: CopyEngine) -> None:
    threads, per_thread, block_bytes = 4, 16, 8193
    src = host_space(threads * per_thread, block_bytes)
    dst = host_space(threads * per_thread, block_bytes)
    data = fill_random(src, seed=4)
    poison(dst)
    failures: list[str] = []

    def submitter(number: int) -> None:
        mine = [number * per_thread + k for k in range(per_thread)]
        batches = [engine.submit(src, [block], dst, [block]) for block in reversed(mine)]
        failures.extend(batch.error or "" for batch in batches if not batch.wait(WAIT_S) or batch.error)

    workers = [threading.Thread(target=submitter, args=(number,)) for number in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT_S)
    assert failures == []
    check_blocks(dst, data, {block: block for block in range(threads * per_thread)})


def test_a_failing_callback_neither_stops_the_lane_nor_loses_later_batches(engine: CopyEngine) -> None:
    src, dst = host_space(2, 4096), host_space(2, 4096)

    def explode(batch: CopyBatch) -> None:
        raise RuntimeError("sink broke")

    engine.submit(src, [0], dst, [0], on_done=explode)
    later = engine.submit(src, [1], dst, [1])
    later.result(WAIT_S)


def test_a_closed_engine_fails_new_batches_instead_of_dropping_them() -> None:
    engine = CopyEngine(cpu_threads=1)
    engine.copy(host_space(1, 16), [0], host_space(1, 16), [0], WAIT_S)
    engine.close()
    seen: list[CopyBatch] = []
    batch = engine.submit(host_space(1, 16), [0], host_space(1, 16), [0], on_done=seen.append)
    assert seen == [batch] and batch.error == "the copy engine is closed"


def test_slot_views_of_one_region_become_one_space_and_runs_merge(engine: CopyEngine) -> None:
    block_bytes = 4097
    region = mmap.mmap(-1, 10 * block_bytes)
    base = memoryview(region)
    views = [base[slot * block_bytes : (slot + 1) * block_bytes] for slot in (2, 3, 4, 8)]
    space, blocks = views_space(views)
    assert space.strided and blocks == [2, 3, 4, 8]
    src = host_space(4, block_bytes)
    data = fill_random(src, seed=5)
    batch = engine.submit(src, [0, 1, 2, 3], space, blocks)
    batch.result(WAIT_S)
    assert [bytes(view) for view in views] == [data[index].numpy().tobytes() for index in range(4)]
    assert region[: 2 * block_bytes] == bytes(2 * block_bytes)  # slots 0 and 1 untouched
    for view in views:
        view.release()
    base.release()
    del space, batch
    region.close()


def test_views_of_separate_buffers_are_copied_one_by_one(engine: CopyEngine) -> None:
    buffers = [bytearray([POISON]) * 4097 for _ in range(3)]
    space, blocks = views_space([memoryview(buffer) for buffer in buffers])
    assert not space.strided and blocks == [0, 1, 2]
    src = host_space(3, 4097)
    data = fill_random(src, seed=6)
    engine.copy(src, [2, 1, 0], space, blocks, WAIT_S)
    assert [bytes(buffer) for buffer in buffers] == [data[k].numpy().tobytes() for k in (2, 1, 0)]


def test_read_only_views_can_be_sources(engine: CopyEngine) -> None:
    payload = bytes(range(256)) * 16
    space, blocks = views_space([memoryview(payload)])
    dst = host_space(1, len(payload))
    engine.copy(space, blocks, dst, [0], WAIT_S)
    assert dst.block(0).numpy().tobytes() == payload


def test_views_of_different_sizes_are_refused() -> None:
    with pytest.raises(CopyError, match="views differ in size"):
        views_space([memoryview(bytearray(8)), memoryview(bytearray(9))])


def test_host_copies_use_the_host_lane_and_device_copies_name_their_direction() -> None:
    host = host_space(1, 8)
    assert lane_key(host, host) == "host"
    if torch.cuda.is_available():
        device = BlockSpace.of_tensor(torch.empty(8, dtype=torch.uint8, device="cuda"), 8)
        assert (lane_key(device, host), lane_key(host, device), lane_key(device, device)) == (
            "d2h:0",
            "h2d:0",
            "d2d:0",
        )


def test_without_cuda_a_cuda_lane_is_refused_with_a_clear_message() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from tieredkv_agent.copy.cuda import check_device

    with pytest.raises(CopyError, match="not a usable CUDA device"):
        check_device(torch.device("cuda", 0))
