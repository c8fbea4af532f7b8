"""Block spaces: `num_blocks` blocks of `block_bytes` bytes in one memory, as torch byte tensors.

A space is either *strided* (one 2-D uint8 tensor of shape (num_blocks, block_bytes): a CUDA tensor, a
pinned or plain host buffer, a shared-memory region, the RAM pool) or *listed* (one 1-D tensor per block,
for blocks that do not share a base: the engine copies them one by one).

    BlockSpace.of_tensor(kv_tensor, block_bytes)      any contiguous tensor, viewed as bytes
    BlockSpace.of_buffer(mmap_or_memoryview, block_bytes)
    BlockSpace.allocate(num_blocks, block_bytes, pin=...)
    views_space(job_views) -> (space, indices)        slot views of one region -> the region + slot numbers

A space made from a Python buffer does not keep the buffer's memory mapped (torch.frombuffer holds the
object, not a buffer export): whoever owns the mapping keeps it mapped until the copies using it finished.

Thread-safety: spaces are immutable after construction; any thread may build them and the engine's lanes
read them concurrently.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence

import torch

from tieredkv_agent.copy.plan import CopyError
from tieredkv_agent.copy.typed import cudart

_HOST_REGISTER_PORTABLE = 1
"""cudaHostRegisterPortable: page-locked for every CUDA context of the process."""
_priming = threading.Lock()
_primed = threading.Event()


def _frombuffer(buffer: object) -> torch.Tensor:
    """A uint8 tensor over a Python buffer; read-only buffers are accepted (only ever read from).

    torch warns once per process when it wraps a read-only buffer; that single warning is taken here
    under a lock, so no caller's warning filters are touched later.
    """
    if not _primed.is_set():
        with _priming:
            if not _primed.is_set():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    torch.frombuffer(b"\0", dtype=torch.uint8)
                _primed.set()
    return torch.frombuffer(buffer, dtype=torch.uint8)


def cuda_available() -> bool:
    """True when this process can use CUDA (decides pinned memory and the CUDA lanes)."""
    return bool(torch.cuda.is_available())


class BlockSpace:
    """Blocks of one size in one memory; `flat(start, count)` is the 1-D byte view of consecutive blocks."""

    __slots__ = ("_base", "_blocks", "_pinned", "_rows", "block_bytes", "device", "num_blocks")

    def __init__(
        self, rows: torch.Tensor | None = None, blocks: Sequence[torch.Tensor] | None = None
    ) -> None:
        """Exactly one of `rows` (2-D contiguous uint8) or `blocks` (equal-sized 1-D contiguous uint8)."""
        if (rows is None) == (blocks is None):
            raise ValueError("give rows or blocks, not both or neither")
        self._rows = rows
        self._blocks = tuple(blocks) if blocks is not None else ()
        self._pinned: bool | None = None
        self._base = rows.data_ptr() if rows is not None else 0
        if rows is not None:
            if rows.dtype != torch.uint8 or rows.dim() != 2 or not rows.is_contiguous():
                raise ValueError("rows must be a contiguous 2-D uint8 tensor")
            self.num_blocks, self.block_bytes = int(rows.shape[0]), int(rows.shape[1])
            self.device = rows.device
        else:
            self._check_blocks()
            self.num_blocks = len(self._blocks)
            self.block_bytes = int(self._blocks[0].numel()) if self._blocks else 0
            self.device = self._blocks[0].device if self._blocks else torch.device("cpu")

    def _check_blocks(self) -> None:
        sizes = {int(block.numel()) for block in self._blocks}
        devices = {block.device for block in self._blocks}
        if len(sizes) > 1 or len(devices) > 1:
            shown = sorted(map(str, devices))
            raise CopyError(f"listed blocks differ in size {sorted(sizes)} or device {shown}")
        for block in self._blocks:
            if block.dtype != torch.uint8 or block.dim() != 1 or not block.is_contiguous():
                raise ValueError("listed blocks must be contiguous 1-D uint8 tensors")

    @classmethod
    def of_tensor(cls, tensor: torch.Tensor, block_bytes: int) -> BlockSpace:
        """Any contiguous tensor (a KV cache, a staging buffer) as blocks of `block_bytes` bytes."""
        if not tensor.is_contiguous():
            raise CopyError("a block space needs a contiguous tensor")
        flat = tensor.reshape(-1).view(torch.uint8)
        if block_bytes < 1 or flat.numel() % block_bytes:
            raise CopyError(f"{flat.numel()} bytes are not a whole number of {block_bytes}-byte blocks")
        return cls(rows=flat.view(-1, block_bytes))

    @classmethod
    def of_buffer(cls, buffer: object, block_bytes: int) -> BlockSpace:
        """A Python buffer (mmap, memoryview, bytearray) as whole blocks; a partial last block is left out."""
        flat = _frombuffer(buffer)
        whole = flat.numel() // block_bytes * block_bytes if block_bytes > 0 else 0
        if whole == 0:
            raise CopyError(f"a buffer of {flat.numel()} bytes holds no {block_bytes}-byte block")
        return cls(rows=flat[:whole].view(-1, block_bytes))

    @classmethod
    def allocate(cls, num_blocks: int, block_bytes: int, *, pin: bool | None = None) -> BlockSpace:
        """New host memory for `num_blocks` blocks; pinned when `pin`, by default when CUDA is available.

        Large pinned pools are registered page-locked memory (`cudaHostRegister`) rather than torch's
        pinned allocator, which rounds every allocation up to a power of two.
        """
        rows = torch.empty((num_blocks, block_bytes), dtype=torch.uint8)
        if pin if pin is not None else cuda_available():
            _register(rows)
        return cls(rows=rows)

    @property
    def strided(self) -> bool:
        """True when consecutive blocks are consecutive in memory, so runs may be copied as one."""
        return self._rows is not None

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def pinned(self) -> bool:
        """Host memory the GPU can DMA from directly (False on machines without CUDA)."""
        if self._pinned is None:
            first = self._rows if self._rows is not None else (self._blocks[0] if self._blocks else None)
            self._pinned = bool(
                first is not None and not self.is_cuda and cuda_available() and first.is_pinned()
            )
        return self._pinned

    @property
    def nbytes(self) -> int:
        return self.num_blocks * self.block_bytes

    def flat(self, start: int, count: int) -> torch.Tensor:
        """The bytes of blocks start .. start+count-1 as one 1-D tensor (count 1 only for listed spaces)."""
        if self._rows is not None:
            return self._rows[start : start + count].view(-1)
        if count != 1:
            raise CopyError("a listed space copies one block at a time")
        return self._blocks[start]

    def block(self, index: int) -> torch.Tensor:
        return self.flat(index, 1)

    def address(self, index: int) -> int:
        """The address of block `index`'s first byte (its blocks follow it in a strided space).

        For raw host copies; the index must already be checked (the engine's plan does that).
        """
        if self._rows is not None:
            return self._base + index * self.block_bytes
        return self._blocks[index].data_ptr()


def _register(rows: torch.Tensor) -> None:
    """Page-lock host memory in place for DMA (CUDA only); CopyError if the driver refuses."""
    if not cuda_available():
        raise CopyError("pinned memory needs CUDA, and CUDA is not available")
    if rows.numel() == 0:
        return
    status = cudart().cudaHostRegister(rows.data_ptr(), rows.numel(), _HOST_REGISTER_PORTABLE)
    if int(status) != 0:
        raise CopyError(f"cudaHostRegister of {rows.numel()} bytes failed with CUDA error {int(status)}")


def unregister(space: BlockSpace) -> None:
    """Undo `allocate(..., pin=True)` before the memory is freed (the owner's shutdown path)."""
    if space.pinned and space.strided and space.num_blocks:
        cudart().cudaHostUnregister(space.flat(0, 1).data_ptr())


def views_space(views: Sequence[memoryview]) -> tuple[BlockSpace, list[int]]:
    """One space for a job's equal-sized views, and each view's block index in it.

    When every view slices the same exporter (`view.obj`, e.g. the instance's region mmap) at offsets that
    are a whole number of blocks apart, the space covers that exporter and runs can be merged; otherwise
    the space lists the views themselves, in order.
    """
    if not views:
        raise CopyError("a batch needs at least one block")
    block_bytes = views[0].nbytes
    if block_bytes == 0 or any(view.nbytes != block_bytes for view in views):
        raise CopyError(f"views differ in size: {sorted({view.nbytes for view in views})}")
    listed = [_frombuffer(view) for view in views]
    owner = views[0].obj
    if owner is None or any(view.obj is not owner for view in views):
        return BlockSpace(blocks=listed), list(range(len(views)))
    base = _frombuffer(owner)
    origin = base.data_ptr()
    offsets = [tensor.data_ptr() - origin for tensor in listed]
    phase = offsets[0] % block_bytes
    if any(offset < 0 or offset % block_bytes != phase for offset in offsets):
        return BlockSpace(blocks=listed), list(range(len(views)))
    usable = (base.numel() - phase) // block_bytes
    rows = base[phase : phase + usable * block_bytes].view(usable, block_bytes)
    return BlockSpace(rows=rows), [(offset - phase) // block_bytes for offset in offsets]
