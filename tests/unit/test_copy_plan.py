"""Copy plans without torch: index checks, merged runs, and byte pieces that cover each run exactly once."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tieredkv_agent.copy import CopyError, Piece, Run, plan_runs, split_runs
from tieredkv_agent.copy.plan import even_target

pytestmark = pytest.mark.unit


def test_importing_the_copy_package_does_not_import_torch() -> None:
    import subprocess

    code = "import sys, tieredkv_agent.copy; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_consecutive_blocks_on_both_sides_merge_into_one_run() -> None:
    runs = plan_runs([4, 5, 6, 9, 2], [0, 1, 2, 3, 7], src_size=10, dst_size=8)
    assert runs == [Run(4, 0, 3), Run(9, 3, 1), Run(2, 7, 1)]


def test_runs_break_where_only_one_side_is_consecutive() -> None:
    assert plan_runs([0, 1, 2], [0, 2, 3], src_size=3, dst_size=4) == [Run(0, 0, 1), Run(1, 2, 2)]


def test_reverse_order_never_merges() -> None:
    runs = plan_runs([3, 2, 1, 0], [0, 1, 2, 3], src_size=4, dst_size=4)
    assert [run.count for run in runs] == [1, 1, 1, 1]


def test_without_coalescing_every_block_is_its_own_run() -> None:
    runs = plan_runs([0, 1, 2], [0, 1, 2], src_size=3, dst_size=3, coalesce=False)
    assert runs == [Run(0, 0, 1), Run(1, 1, 1), Run(2, 2, 1)]


@pytest.mark.parametrize(
    ("src", "dst", "message"),
    [
        ([0, 1], [0], "2 source blocks but 1 destination blocks"),
        ([0, 5], [0, 1], "src_blocks[1] = 5 is out of range"),
        ([0, -1], [0, 1], "src_blocks[1] = -1 is out of range"),
        ([0, 1], [0, 4], "dst_blocks[1] = 4 is out of range"),
        ([0, 1], [2, 2], "destination block 2 appears more than once"),
        ([0, 1.0], [0, 1], "is not an integer block index"),
        ([True], [0], "is a bool"),
    ],
)
def test_bad_indices_are_refused_with_a_message_naming_the_first_one(
    src: list[int], dst: list[int], message: str
) -> None:
    with pytest.raises(CopyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        plan_runs(src, dst, src_size=5, dst_size=4)


def test_a_source_block_may_be_copied_to_several_destinations() -> None:
    assert plan_runs([1, 1, 1], [0, 1, 2], src_size=2, dst_size=3) == [
        Run(1, 0, 1),
        Run(1, 1, 1),
        Run(1, 2, 1),
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 63), min_size=0, max_size=40),
    st.permutations(list(range(64))),
)
def test_runs_expand_back_to_exactly_the_requested_pairs(src: list[int], dst_order: list[int]) -> None:
    dst = dst_order[: len(src)]
    runs = plan_runs(src, dst, src_size=64, dst_size=64)
    expanded = [(run.src + k, run.dst + k) for run in runs for k in range(run.count)]
    assert expanded == list(zip(src, dst, strict=True))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 9), min_size=1, max_size=12),
    st.integers(1, 5000),
    st.integers(1, 30),
)
def test_pieces_cover_every_byte_of_every_run_once_in_groups_within_the_target(
    counts: list[int], block_bytes: int, thirds: int
) -> None:
    target = block_bytes * thirds // 3 + 1
    runs = [Run(0, 0, count) for count in counts]
    groups = split_runs(runs, block_bytes, target)
    assert all(sum(piece.nbytes for piece in group) <= target for group in groups)
    covered: dict[int, list[tuple[int, int]]] = {}
    for piece in (piece for group in groups for piece in group):
        covered.setdefault(piece.run, []).append((piece.offset, piece.nbytes))
    for number, run in enumerate(runs):
        offset = 0
        for start, nbytes in covered[number]:
            assert start == offset and nbytes > 0
            offset += nbytes
        assert offset == run.count * block_bytes


def test_a_long_run_is_cut_inside_so_threads_share_it() -> None:
    groups = split_runs([Run(0, 0, 4)], 100, 150)
    assert groups == [
        [Piece(0, 0, 150)],
        [Piece(0, 150, 150)],
        [Piece(0, 300, 100)],
    ]


def test_even_target_keeps_pieces_above_the_minimum() -> None:
    assert even_target(8 << 20, 4, 1 << 20) == 2 << 20
    assert even_target(1 << 20, 4, 1 << 20) == 1 << 20
    assert even_target(10, 4, 1 << 20) == 10
