"""tieredkv's CPU offloading spec against vLLM 0.32's own classes, and its copy plan on real memory (fast)."""

from __future__ import annotations

import numpy as np
import pytest

from tieredkv_agent import vllm_cpu
from tieredkv_agent.vllm_cpu.plan import DataRef, TensorPair, plan_copies

pytestmark = pytest.mark.vllm

PAGE = 128
BLOCKS_PER_CHUNK = 2
ROW = 1024


def test_vllms_own_factory_loads_the_spec_which_overrides_only_get_worker() -> None:
    from vllm.v1.kv_offload.factory import OffloadingSpecFactory
    from vllm.v1.kv_offload.tiering.spec import TieringOffloadingSpec

    spec_cls = OffloadingSpecFactory.get_spec_cls(vllm_cpu.spec_keys())
    assert spec_cls.__name__ == vllm_cpu.SPEC_NAME
    assert issubclass(spec_cls, TieringOffloadingSpec)
    assert {name for name in vars(spec_cls) if not name.startswith("_")} == {"get_worker"}


def test_other_vllm_lines_are_refused_naming_the_supported_ones() -> None:
    assert vllm_cpu.check_vllm_line().startswith("0.32.")
    with pytest.raises(vllm_cpu.UnsupportedVllmError, match=r"supports vLLM 0\.32\.x; this is vLLM 0\.33\.0"):
        vllm_cpu.check_vllm_line("0.33.0")


def test_a_store_then_a_load_moves_each_page_to_its_chunk_slot_even_part_way_into_a_chunk() -> None:
    rng = np.random.default_rng(7)
    engine = [rng.integers(0, 256, (8, 2 * PAGE), dtype=np.uint8) for _ in range(2)]  # block stride 256
    region = np.zeros((4, ROW), dtype=np.uint8)
    pairs = [
        TensorPair(
            engine_base=engine[t].ctypes.data,
            engine_block_stride=engine[t].strides[0],
            engine_num_blocks=8,
            page_bytes=PAGE,
            region_base=region.ctypes.data + t * PAGE * BLOCKS_PER_CHUNK,  # tensors consecutive in the slot
            region_row_stride=ROW,
            region_num_chunks=4,
        )
        for t in range(2)
    ]
    refs = [[DataRef(0, 120), DataRef(1, PAGE)]]

    # Request blocks 1..3 in engine blocks 5, 1, 7: block 1 is the second half of chunk 2, blocks 2-3 chunk 0.
    def copy(to_region: bool) -> None:
        plan_copies(
            pairs,
            refs,
            BLOCKS_PER_CHUNK,
            engine_block_ids=np.array([5, 1, 7]),
            group_sizes=[3],
            block_indices=[1],
            chunk_ids=np.array([2, 0]),
            to_region=to_region,
        ).run()

    copy(to_region=True)

    placed = {5: (2, 1), 1: (0, 0), 7: (0, 1)}  # engine block -> (chunk, sub-block)
    for block, (chunk, sub) in placed.items():
        for t, size in ((0, 120), (1, PAGE)):
            start = t * PAGE * BLOCKS_PER_CHUNK + sub * PAGE
            assert bytes(region[chunk, start : start + size]) == bytes(engine[t][block, :size])
    assert not region[2, :PAGE].any()  # the skipped first half of chunk 2 is untouched
    assert not region[1].any()

    expected = [e.copy() for e in engine]
    for e in engine:
        e[:] = 0
    copy(to_region=False)
    for block in placed:
        assert bytes(engine[0][block, :120]) == bytes(expected[0][block, :120])
        assert bytes(engine[1][block, :PAGE]) == bytes(expected[1][block, :PAGE])
        assert not engine[0][block, 120:].any()  # only the un-padded page is copied


def test_ids_outside_the_tensors_or_the_region_are_refused_before_any_copy() -> None:
    pair = TensorPair(0x1000, 256, 8, PAGE, 0x10000, ROW, 4)
    with pytest.raises(ValueError, match="region chunk id out of range"):
        plan_copies(
            [pair],
            [[DataRef(0, PAGE)]],
            1,
            engine_block_ids=np.array([0]),
            group_sizes=[1],
            block_indices=[0],
            chunk_ids=np.array([4]),
            to_region=True,
        )
    with pytest.raises(ValueError, match="engine block id out of range"):
        plan_copies(
            [pair],
            [[DataRef(0, PAGE)]],
            1,
            engine_block_ids=np.array([8]),
            group_sizes=[1],
            block_indices=[0],
            chunk_ids=np.array([0]),
            to_region=True,
        )
