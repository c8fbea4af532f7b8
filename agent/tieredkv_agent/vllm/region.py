"""Find the file behind vLLM's CPU region, so its descriptor can be handed to the node agent.

vLLM's scheduler process maps `/dev/shm/vllm_offload_<engine>.mmap` (`SharedOffloadRegion`) and passes
the tier a `memoryview` over that mapping (`primary_kv_view`, shape (num_chunks, row_stride)). The view
does not say which file it maps, so this module reads `/proc/self/maps`: the lines covering the view's
address range name the file and the offset it is mapped at. The agent maps the whole file from byte 0, so
the view must start at file offset 0 and lie in one file.

Called once, from the tier's constructor (vLLM's scheduler thread). No torch; numpy only to read the
view's address.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROC_MAPS = Path("/proc/self/maps")


class RegionError(Exception):
    """The view is not a shared file mapping the agent could map the same way; says why."""


@dataclass(frozen=True, slots=True)
class Mapping:
    """One line of /proc/<pid>/maps."""

    start: int
    end: int
    shared: bool
    offset: int
    path: str


@dataclass(frozen=True, slots=True)
class BackingFile:
    """The file behind a view: its path, the view's length, and the block size (row stride)."""

    path: str
    view_bytes: int
    block_bytes: int


def parse_maps(text: str) -> list[Mapping]:
    """The mappings of a /proc/<pid>/maps text (lines without a path get path "")."""
    mappings = []
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            continue
        start, _, end = fields[0].partition("-")
        path = fields[5].strip() if len(fields) == 6 else ""
        mappings.append(
            Mapping(int(start, 16), int(end, 16), fields[1][3:4] == "s", int(fields[2], 16), path)
        )
    return mappings


def view_address(view: memoryview) -> tuple[int, int]:
    """(address of the first byte, length in bytes) of a C-contiguous view."""
    if not view.c_contiguous:
        raise RegionError("the primary KV view is not C-contiguous; it cannot be a plain file mapping")
    array = np.frombuffer(view.cast("B"), dtype=np.uint8)
    return int(array.__array_interface__["data"][0]), view.nbytes


def block_bytes_of(view: memoryview) -> int:
    """vLLM's row stride: bytes per chunk slot and per block file (`primary_kv_view.strides[0]`)."""
    strides = view.strides or ()
    if not strides or strides[0] <= 0:
        raise RegionError(f"the primary KV view has no positive row stride (shape {view.shape})")
    return int(strides[0])


def locate(address: int, length: int, mappings: list[Mapping]) -> str:
    """The path of the one shared file mapped at file offset 0 that covers [address, address+length)."""
    covering = sorted(
        (m for m in mappings if m.start < address + length and m.end > address), key=lambda m: m.start
    )
    if not covering:
        raise RegionError(f"no mapping covers the primary KV view at {address:#x}")
    paths = {m.path for m in covering}
    if len(paths) != 1:
        named = ", ".join(sorted(p or "<anonymous>" for p in paths))
        raise RegionError(f"the primary KV view spans {len(paths)} mappings ({named}); the agent needs one")
    path = paths.pop()
    if not path.startswith("/") or path.endswith(" (deleted)"):
        raise RegionError(f"the primary KV view is not backed by a file one can open: {path or 'anonymous'}")
    if not all(m.shared for m in covering):
        raise RegionError(f"{path} is mapped private (copy-on-write); the agent would not see its bytes")
    expected = covering[0].start
    for m in covering:
        if m.start != expected or m.offset != covering[0].offset + (m.start - covering[0].start):
            raise RegionError(f"the mapping of {path} is not contiguous in memory and file")
        expected = m.end
    if covering[0].start > address or expected < address + length:
        raise RegionError(f"the mappings of {path} do not cover the whole primary KV view")
    if covering[0].offset + (address - covering[0].start) != 0:
        raise RegionError(f"the primary KV view does not start at byte 0 of {path}")
    return path


def backing_file(view: memoryview, maps_text: str | None = None) -> BackingFile:
    """Where `view` lives (vLLM's scheduler thread, once); RegionError says why it cannot be shared."""
    address, length = view_address(view)
    text = PROC_MAPS.read_text() if maps_text is None else maps_text
    return BackingFile(locate(address, length, parse_maps(text)), length, block_bytes_of(view))


def open_region(backing: BackingFile) -> tuple[int, int]:
    """(read-write descriptor of the file, its size); the caller closes the descriptor."""
    fd = os.open(backing.path, os.O_RDWR | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size < backing.view_bytes:
            raise RegionError(f"{backing.path} has {size} bytes, fewer than the view's {backing.view_bytes}")
        if size % backing.block_bytes:
            raise RegionError(
                f"{backing.path} has {size} bytes, not a whole number of {backing.block_bytes}-byte blocks"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, size
