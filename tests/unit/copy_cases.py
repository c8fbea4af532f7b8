"""Copy-engine cases shared by the CPU tests (tests/unit) and the CUDA tests (tests/gpu).

A case fills the source with random bytes, poisons the whole destination with 0xAB, copies, and then checks
every byte of every destination block: copied blocks equal their source, all others are still poisoned.
Spaces come from a `Make(num_blocks, block_bytes)` factory, so the same case runs on any memory.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from tieredkv_agent.copy.engine import CopyEngine
from tieredkv_agent.copy.spaces import BlockSpace

POISON = 0xAB
WAIT_S = 20.0
Make = Callable[[int, int], BlockSpace]


def host_space(num_blocks: int, block_bytes: int) -> BlockSpace:
    return BlockSpace.allocate(num_blocks, block_bytes, pin=False)


def fill_random(space: BlockSpace, seed: int) -> torch.Tensor:
    """Random bytes into every block; returns them as a CPU tensor of shape (num_blocks, block_bytes)."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.randint(
        0, 256, (space.num_blocks, space.block_bytes), dtype=torch.uint8, generator=generator
    )
    space.flat(0, space.num_blocks).copy_(data.view(-1))
    return data


def poison(space: BlockSpace) -> None:
    space.flat(0, space.num_blocks).fill_(POISON)


def check_blocks(dst: BlockSpace, source: torch.Tensor, pairs: dict[int, int]) -> None:
    """Every destination block: equal to `source[pairs[block]]` if copied, else poisoned throughout."""
    landed = dst.flat(0, dst.num_blocks).cpu().view(dst.num_blocks, dst.block_bytes)
    for block in range(dst.num_blocks):
        if block in pairs:
            assert torch.equal(landed[block], source[pairs[block]]), f"block {block} differs from its source"
        else:
            assert bool((landed[block] == POISON).all()), f"untouched block {block} was written"


def pattern(
    name: str, sources: int, destinations: int, count: int, seed: int = 7
) -> tuple[list[int], list[int]]:
    """Index lists of a named shape: contiguous, reverse, strided, random, single, one_to_many."""
    rng = random.Random(seed)
    if name == "contiguous":
        return list(range(2, 2 + count)), list(range(1, 1 + count))
    if name == "reverse":
        return list(range(count - 1, -1, -1)), list(range(count))
    if name == "strided":
        return list(range(0, 3 * count, 3))[:count], list(range(1, 2 * count, 2))[:count]
    if name == "random":
        return rng.sample(range(sources), count), rng.sample(range(destinations), count)
    if name == "single":
        return [sources - 1], [0]
    if name == "one_to_many":
        return [5] * count, rng.sample(range(destinations), count)
    raise ValueError(name)


PATTERNS = ("contiguous", "reverse", "strided", "random", "single", "one_to_many")


def run_pattern(engine: CopyEngine, make_src: Make, make_dst: Make, name: str, block_bytes: int) -> None:
    """One pattern end to end: random source, poisoned destination, every block checked."""
    sources, destinations, count = 40, 48, 12
    src, dst = make_src(sources, block_bytes), make_dst(destinations, block_bytes)
    data = fill_random(src, seed=block_bytes)
    poison(dst)
    src_blocks, dst_blocks = pattern(name, sources, destinations, count)
    engine.submit(src, src_blocks, dst, dst_blocks).result(WAIT_S)
    check_blocks(dst, data, dict(zip(dst_blocks, src_blocks, strict=True)))


def run_bad_batch_then_good(engine: CopyEngine, make_src: Make, make_dst: Make) -> None:
    """A refused batch writes nothing and names the bad index; the next batch on the same spaces works."""
    src, dst = make_src(8, 4097), make_dst(8, 4097)
    data = fill_random(src, seed=3)
    poison(dst)
    bad = engine.submit(src, [0, 1, 8], dst, [0, 1, 2])
    assert bad.wait(WAIT_S) and bad.error is not None and "src_blocks[2] = 8" in bad.error
    check_blocks(dst, data, {})
    engine.submit(src, [7, 6], dst, [0, 1]).result(WAIT_S)
    check_blocks(dst, data, {0: 7, 1: 6})
