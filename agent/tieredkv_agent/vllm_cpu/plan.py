"""Copy plans for the CPU offloading worker: (src, dst, size) byte triples, computed with numpy only.

The plan is the one vLLM's GPU offloading worker (`kv_offload/cpu/gpu_worker.py`, direct layout) builds for
`swap_blocks_batch`: for every KV-cache group, for every data reference (a layer's slice of one canonical
tensor) and every block of the job, one copy of the reference's un-padded page between

* the engine's KV tensor: `engine_base + block_id * engine_block_stride`, and
* the shared offload region: `region_base + chunk_id * row_stride + sub_block * page_bytes`, where a chunk
  holds `blocks_per_chunk` engine blocks and a group's first chunk may be entered part way, at sub-block
  `block_index % blocks_per_chunk` (the job's first block is not chunk-aligned).

Every address is checked against the bounds of its tensor or region view before anything is copied.
Pure: no torch, no vLLM; callable from any thread.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Addresses = npt.NDArray[np.uint64]


@dataclass(frozen=True)
class TensorPair:
    """One canonical KV tensor of the engine and its column in the shared offload region (in bytes)."""

    engine_base: int
    engine_block_stride: int
    engine_num_blocks: int
    page_bytes: int
    """The (possibly padded) page size of one engine block: the step between sub-blocks of a chunk."""
    region_base: int
    region_row_stride: int
    region_num_chunks: int


@dataclass(frozen=True)
class DataRef:
    """A layer's use of a canonical tensor: which tensor, and how many bytes of each page it occupies."""

    tensor_idx: int
    page_size_bytes: int


@dataclass(frozen=True)
class CopyPlan:
    """Byte triples to copy, in order: `sizes[i]` bytes from `src[i]` to `dst[i]`."""

    src: Addresses
    dst: Addresses
    sizes: Addresses

    @property
    def total_bytes(self) -> int:
        return int(self.sizes.sum())

    def run(self) -> None:
        """Copy every triple with memmove, on the calling thread."""
        for src, dst, size in zip(self.src.tolist(), self.dst.tolist(), self.sizes.tolist(), strict=True):
            ctypes.memmove(dst, src, size)


def validate_pairs(pairs: Sequence[TensorPair], refs_per_group: Sequence[Sequence[DataRef]]) -> None:
    """Raise ValueError unless every reference fits its tensor's page (checked once, at start-up)."""
    for group in refs_per_group:
        for ref in group:
            if not 0 <= ref.tensor_idx < len(pairs):
                raise ValueError(f"data reference to tensor {ref.tensor_idx}, but there are {len(pairs)}")
            pair = pairs[ref.tensor_idx]
            if not 0 < ref.page_size_bytes <= pair.page_bytes <= pair.engine_block_stride:
                raise ValueError(
                    f"page of {ref.page_size_bytes} bytes does not fit tensor {ref.tensor_idx} "
                    f"(page {pair.page_bytes}, block stride {pair.engine_block_stride})"
                )


def plan_copies(
    pairs: Sequence[TensorPair],
    refs_per_group: Sequence[Sequence[DataRef]],
    blocks_per_chunk: int,
    *,
    engine_block_ids: npt.NDArray[np.integer],
    group_sizes: Sequence[int],
    block_indices: Sequence[int],
    chunk_ids: npt.NDArray[np.integer],
    to_region: bool,
) -> CopyPlan:
    """The copies of one job: engine blocks -> region chunks (`to_region`, a store) or back (a load).

    `engine_block_ids` lists each group's blocks in group order (`group_sizes[g]` of them, the first being
    block `block_indices[g]` of the request); `chunk_ids` lists each group's region chunks likewise.
    Raises ValueError when the ids do not add up or point outside a tensor or the region.
    """
    if len(group_sizes) != len(refs_per_group) or len(block_indices) != len(refs_per_group):
        raise ValueError(f"{len(group_sizes)} group sizes for {len(refs_per_group)} KV-cache groups")
    engine_ids = np.asarray(engine_block_ids, dtype=np.int64)
    chunks = np.asarray(chunk_ids, dtype=np.int64)
    srcs: list[Addresses] = []
    dsts: list[Addresses] = []
    sizes: list[Addresses] = []
    engine_offset = chunk_offset = 0
    for refs, size, block_index in zip(refs_per_group, group_sizes, block_indices, strict=True):
        if size == 0:
            continue
        skip = block_index % blocks_per_chunk
        num_chunks = -(-(size + skip) // blocks_per_chunk)
        group_blocks = engine_ids[engine_offset : engine_offset + size]
        group_chunks = chunks[chunk_offset : chunk_offset + num_chunks]
        if len(group_blocks) != size or len(group_chunks) != num_chunks:
            raise ValueError("the job's block or chunk ids are fewer than its group sizes require")
        engine_offset += size
        chunk_offset += num_chunks
        for ref in refs:
            pair = pairs[ref.tensor_idx]
            engine = _engine_addresses(pair, group_blocks)
            region = _region_addresses(pair, group_chunks, blocks_per_chunk, skip, size)
            srcs.append(region if not to_region else engine)
            dsts.append(engine if not to_region else region)
            sizes.append(np.full(size, ref.page_size_bytes, dtype=np.uint64))
    if engine_offset != len(engine_ids) or chunk_offset != len(chunks):
        raise ValueError(
            f"job has {len(engine_ids)} blocks and {len(chunks)} chunks; groups use {engine_offset} and "
            f"{chunk_offset}"
        )
    empty = np.zeros(0, dtype=np.uint64)
    return CopyPlan(
        src=np.concatenate(srcs) if srcs else empty,
        dst=np.concatenate(dsts) if dsts else empty,
        sizes=np.concatenate(sizes) if sizes else empty,
    )


def _engine_addresses(pair: TensorPair, block_ids: npt.NDArray[np.int64]) -> Addresses:
    if block_ids.size and (block_ids.min() < 0 or block_ids.max() >= pair.engine_num_blocks):
        raise ValueError(
            f"engine block id out of range 0..{pair.engine_num_blocks - 1}: {block_ids.tolist()}"
        )
    offsets = block_ids.astype(np.uint64) * np.uint64(pair.engine_block_stride)
    return np.uint64(pair.engine_base) + offsets


def _region_addresses(
    pair: TensorPair, chunk_ids: npt.NDArray[np.int64], blocks_per_chunk: int, skip: int, count: int
) -> Addresses:
    if chunk_ids.size and (chunk_ids.min() < 0 or chunk_ids.max() >= pair.region_num_chunks):
        raise ValueError(
            f"region chunk id out of range 0..{pair.region_num_chunks - 1}: {chunk_ids.tolist()}"
        )
    rows = np.uint64(pair.region_base) + chunk_ids.astype(np.uint64) * np.uint64(pair.region_row_stride)
    subs = np.arange(blocks_per_chunk, dtype=np.uint64) * np.uint64(pair.page_bytes)
    flat: Addresses = (rows[:, np.newaxis] + subs[np.newaxis, :]).ravel()
    return flat[skip : skip + count]
