"""The copy engine's CUDA lanes: the CPU cases on device, pinned and pageable memory, ordering, and IPC.

Skipped without CUDA (tests/gpu/conftest.py); tests/unit/test_copy_engine.py runs the same cases on CPU.
"""

from __future__ import annotations

import gc
import multiprocessing
import threading
from collections.abc import Iterator

import pytest
import torch

from tests.gpu.ipc_child import exporter, pattern
from tests.unit.copy_cases import (
    PATTERNS,
    WAIT_S,
    Make,
    check_blocks,
    fill_random,
    host_space,
    poison,
    run_bad_batch_then_good,
    run_pattern,
)
from tieredkv_agent.copy.engine import CopyEngine
from tieredkv_agent.copy.lanes import CopyBatch
from tieredkv_agent.copy.spaces import BlockSpace
from tieredkv_agent.copy.typed import new_stream

pytestmark = pytest.mark.gpu


def device_space(num_blocks: int, block_bytes: int) -> BlockSpace:
    """Device blocks that start 512 bytes into their allocation (as a KV tensor inside a pool would)."""
    allocation = torch.empty(512 + num_blocks * block_bytes, dtype=torch.uint8, device="cuda")
    return BlockSpace.of_tensor(allocation[512:], block_bytes)


def pinned_space(num_blocks: int, block_bytes: int) -> BlockSpace:
    return BlockSpace.allocate(num_blocks, block_bytes, pin=True)


MEMORIES: dict[str, Make] = {"device": device_space, "pinned": pinned_space, "pageable": host_space}
DIRECTIONS = [
    ("device", "pinned"),
    ("pinned", "device"),
    ("device", "pageable"),
    ("pageable", "device"),
    ("device", "device"),
]


@pytest.fixture
def engine() -> Iterator[CopyEngine]:
    made = CopyEngine(cpu_threads=2, staging_bytes=8 << 20)
    yield made
    made.close()


@pytest.mark.parametrize("block_bytes", [4097, 2 << 20])
@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize(("source", "destination"), DIRECTIONS)
def test_cuda_copies_match_their_sources_byte_for_byte(
    engine: CopyEngine, source: str, destination: str, name: str, block_bytes: int
) -> None:
    run_pattern(engine, MEMORIES[source], MEMORIES[destination], name, block_bytes)


@pytest.mark.parametrize(("source", "destination"), DIRECTIONS)
def test_a_bad_index_fails_only_its_batch_on_a_cuda_lane(
    engine: CopyEngine, source: str, destination: str
) -> None:
    run_bad_batch_then_good(engine, MEMORIES[source], MEMORIES[destination])


@pytest.mark.parametrize(("source", "destination"), [("pageable", "device"), ("device", "pageable")])
def test_batches_larger_than_the_staging_buffers_go_through_in_pieces(source: str, destination: str) -> None:
    engine = CopyEngine(staging_bytes=3 * 4097)
    try:
        src, dst = MEMORIES[source](24, 4097), MEMORIES[destination](24, 4097)
        data = fill_random(src, seed=11)
        poison(dst)
        engine.copy(src, list(range(23, -1, -1)), dst, list(range(24)), WAIT_S)
        check_blocks(dst, data, {block: 23 - block for block in range(24)})
    finally:
        engine.close()


def test_copies_wait_for_the_producers_stream(engine: CopyEngine) -> None:
    src, dst = device_space(4, 1 << 20), pinned_space(4, 1 << 20)
    src.flat(0, 4).fill_(1)
    torch.cuda.synchronize()
    producer = new_stream(0)
    with torch.cuda.stream(producer):
        torch.cuda._sleep(200_000_000)  # type: ignore[no-untyped-call]
        src.flat(0, 4).fill_(7)
    engine.submit(src, [0, 1, 2, 3], dst, [0, 1, 2, 3], after=producer).result(WAIT_S)
    assert bool((dst.flat(0, 4) == 7).all())


def test_batches_of_one_cuda_lane_complete_in_submission_order(engine: CopyEngine) -> None:
    src, dst = device_space(32, 1 << 20), pinned_space(32, 1 << 20)
    order: list[int] = []
    batches = [
        engine.submit(src, [block], dst, [block], on_done=lambda batch: order.append(batch.batch_id))
        for block in range(32)
    ]
    assert engine.wait_idle(WAIT_S)
    assert order == [batch.batch_id for batch in batches] and all(batch.ok for batch in batches)


def test_several_threads_on_both_directions_land_intact(engine: CopyEngine) -> None:
    device, host = device_space(32, 65537), pinned_space(32, 65537)
    data = fill_random(host, seed=12)
    failures: list[CopyBatch] = []

    def up(first: int) -> None:
        for block in range(first, 32, 4):
            batch = engine.submit(host, [block], device, [block])
            if not batch.wait(WAIT_S) or batch.error:
                failures.append(batch)

    workers = [threading.Thread(target=up, args=(first,)) for first in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT_S)
    back = pinned_space(32, 65537)
    poison(back)
    engine.copy(device, list(range(32)), back, list(range(32)), WAIT_S)
    assert failures == []
    check_blocks(back, data, {block: block for block in range(32)})


def test_a_flag_signal_is_written_after_the_copies() -> None:
    from tieredkv_agent.copy.gpu_region import FlagSlots

    engine = CopyEngine()
    try:
        flags = FlagSlots.create(2)
        src, dst = device_space(2, 4096), pinned_space(2, 4096)
        engine.submit(src, [0, 1], dst, [0, 1], signal=flags.signal(1, 5)).result(WAIT_S)
        assert flags.read(1) == 5 and flags.read(0) == 0
        waits = engine.submit(src, [0], dst, [1], after=flags.wait(1, 5))
        waits.result(WAIT_S)
    finally:
        engine.close()


def test_a_region_exported_by_another_process_is_read_and_written_through_ipc(engine: CopyEngine) -> None:
    from tieredkv_agent.copy.gpu_region import FlagSlots, ImportedRegion

    blocks, block_bytes, written = 8, 65536 + 1, 3
    context = multiprocessing.get_context("spawn")
    replies, orders = context.Queue(), context.Queue()
    child = context.Process(target=exporter, args=(replies, orders, blocks, block_bytes, written))
    child.start()
    try:
        reply = replies.get(timeout=120)
        assert not isinstance(reply, str), reply
        region_export, flags_export = reply
        assert region_export.offset >= 1 << 20  # the tensor sits inside its allocation
        region, flags = ImportedRegion(region_export), FlagSlots.open(flags_export)
        host = pinned_space(blocks, block_bytes)
        poison(host)
        engine.submit(
            region.space, list(range(blocks)), host, list(range(blocks)), after=flags.wait(0, 1)
        ).result(WAIT_S)
        check_blocks(host, pattern(blocks, block_bytes, 1), {block: block for block in range(blocks)})
        fresh = pinned_space(written, block_bytes)
        fresh.flat(0, written).copy_(pattern(written, block_bytes, 2).view(-1))
        engine.submit(
            fresh, list(range(written)), region.space, list(range(written)), signal=flags.signal(1, 1)
        ).result(WAIT_S)
        orders.put("written")
        assert replies.get(timeout=120) is True
        del region, flags
        gc.collect()
        torch.cuda.synchronize()
        orders.put("closed")
    finally:
        child.join(120)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
