"""Copy plans: which blocks go where, merged into runs and cut into pieces. Pure Python, no torch.

A copy moves block `src_blocks[i]` of a source space to block `dst_blocks[i]` of a destination space::

    src_blocks  4 5 6 9 2        plan_runs         Run(src=4, dst=0, count=3)
    dst_blocks  0 1 2 3 7   ──────────────────►    Run(src=9, dst=3, count=1)
                                                   Run(src=2, dst=7, count=1)

    runs ── split_runs(target_bytes) ──► [[Piece, ...], [Piece, ...]]   each group ≈ target_bytes

`plan_runs` checks every index first (the whole batch is refused with a `CopyError` naming the first bad
index, before any byte moves) and merges neighbours that are consecutive on both sides. `split_runs` cuts
the runs into byte pieces: groups of equal size for the CPU copy threads, or groups that fit a staging
buffer on the CUDA path.

Thread-safety: everything here is a pure function; the engine calls `plan_runs` on the submitting thread
and `split_runs` on its lane threads.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass


class CopyError(Exception):
    """A batch that was refused or failed; the message says which index, size or device error."""


@dataclass(frozen=True, slots=True)
class Run:
    """`count` consecutive blocks from block `src` of the source to block `dst` of the destination."""

    src: int
    dst: int
    count: int


@dataclass(frozen=True, slots=True)
class Piece:
    """`nbytes` bytes at byte `offset` inside run number `run` of a plan (the same offset on both sides)."""

    run: int
    offset: int
    nbytes: int


def _check_indices(name: str, blocks: Sequence[int], size: int) -> list[int]:
    """The indices as plain ints; CopyError for a non-integer or out-of-range one (first one named)."""
    checked: list[int] = []
    for position, block in enumerate(blocks):
        if isinstance(block, bool):
            raise CopyError(f"{name}[{position}] is a bool, not a block index")
        try:
            index = operator.index(block)
        except TypeError:
            raise CopyError(f"{name}[{position}] = {block!r} is not an integer block index") from None
        if not 0 <= index < size:
            raise CopyError(f"{name}[{position}] = {index} is out of range for a space of {size} blocks")
        checked.append(index)
    return checked


def _first_duplicate(blocks: list[int]) -> int | None:
    seen: set[int] = set()
    for block in blocks:
        if block in seen:
            return block
        seen.add(block)
    return None


def plan_runs(
    src_blocks: Sequence[int],
    dst_blocks: Sequence[int],
    *,
    src_size: int,
    dst_size: int,
    coalesce: bool = True,
) -> list[Run]:
    """Checked, merged runs; CopyError if the lengths differ, an index is bad or a destination repeats.

    Sources may repeat (one block copied to several places). `coalesce=False` keeps one run per block,
    for spaces whose blocks are not laid out one after another.
    """
    if len(src_blocks) != len(dst_blocks):
        raise CopyError(f"{len(src_blocks)} source blocks but {len(dst_blocks)} destination blocks")
    src = _check_indices("src_blocks", src_blocks, src_size)
    dst = _check_indices("dst_blocks", dst_blocks, dst_size)
    duplicate = _first_duplicate(dst)
    if duplicate is not None:
        raise CopyError(f"destination block {duplicate} appears more than once in one batch")
    runs: list[Run] = []
    start = 0
    for position in range(1, len(src) + 1):
        ends = (
            position == len(src)
            or not coalesce
            or src[position] != src[position - 1] + 1
            or dst[position] != dst[position - 1] + 1
        )
        if ends:
            runs.append(Run(src[start], dst[start], position - start))
            start = position
    return runs


def split_runs(runs: Sequence[Run], block_bytes: int, target_bytes: int) -> list[list[Piece]]:
    """The runs' bytes cut into consecutive groups of at most `target_bytes` (the last may be smaller).

    A run longer than the target is cut inside, at any byte; pieces of one group keep the runs' order.
    """
    if target_bytes < 1 or block_bytes < 1:
        raise ValueError("block_bytes and target_bytes must be positive")
    groups: list[list[Piece]] = []
    current: list[Piece] = []
    room = target_bytes
    for number, run in enumerate(runs):
        offset, left = 0, run.count * block_bytes
        while left:
            take = min(left, room)
            current.append(Piece(number, offset, take))
            offset, left, room = offset + take, left - take, room - take
            if room == 0:
                groups.append(current)
                current, room = [], target_bytes
    if current:
        groups.append(current)
    return groups


def even_target(total_bytes: int, parts: int, min_bytes: int) -> int:
    """A group size that splits `total_bytes` into at most `parts` groups of at least `min_bytes` each."""
    if total_bytes <= 0:
        return max(1, min_bytes)
    usable = max(1, min(parts, total_bytes // max(1, min_bytes)))
    return -(-total_bytes // usable)
