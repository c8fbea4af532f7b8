"""The opt-in "direct" GPU path: map an instance's GPU KV tensor into the agent, and signal across processes.

::

    instance (vLLM)                                  agent
    export_region(kv, block_bytes) ── GpuRegionExport (handle, offset, nbytes, device uuid) ──►
                                                     ImportedRegion(export).space   (a CUDA BlockSpace)
    FlagSlots.create(slots) ── export ──────────────► FlagSlots.open(export)
    flags.signal(mine, seq) after writing KV         engine.submit(..., after=flags.wait(theirs, seq),
    flags.wait(agent's, seq) before reading KV                         signal=flags.signal(mine, seq))

* A CUDA IPC memory handle (cuda_ipc.py) names a whole allocation and opens at its base, so the export
  carries the tensor's byte offset inside the allocation (`cuMemGetAddressRange`). torch's caching allocator
  qualifies; expandable segments and stream-ordered pools (`cudaMallocAsync`) cannot be exported.
* Devices are matched by UUID: container-local device numbers differ between pods.
* Completion crosses processes through a small int64 buffer in device memory, one slot per recording stream
  so that each slot's value only grows: record = `cuStreamWriteValue64(slot, seq)`, wait =
  `cuStreamWaitValue64(slot, seq, GEQ)`. Where the device lacks 64-bit stream memory operations, the write
  is a one-element fill on the stream and the wait polls the slot from the host (slower, same meaning).
  No CUDA event handles (they need a shared /dev/shm) and no host memory are shared.

The mapping is closed when the last tensor over it is gone (the `_Mapping` owner is what torch keeps alive).
Any thread may build these; the engine's CUDA lanes call `enqueue_wait` / `enqueue_signal`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from tieredkv_agent.copy import cuda_ipc
from tieredkv_agent.copy.plan import CopyError
from tieredkv_agent.copy.spaces import BlockSpace
from tieredkv_agent.copy.typed import new_stream

log = logging.getLogger(__name__)

FLAG_BYTES = 8
POLL_INTERVAL_S = 50e-6


@dataclass(frozen=True, slots=True)
class GpuRegionExport:
    """Plain data an instance ships so that the agent can map its tensor (msgpack/pickle friendly)."""

    handle: bytes
    """cudaIpcMemHandle_t of the whole allocation (64 bytes)."""
    offset: int
    """The tensor's first byte inside that allocation."""
    nbytes: int
    block_bytes: int
    device_uuid: str


def device_uuid(index: int) -> str:
    return str(torch.cuda.get_device_properties(index).uuid)


def device_for_uuid(uuid: str) -> int:
    """This process's index of the GPU with that UUID; CopyError if it is not visible here."""
    for index in range(torch.cuda.device_count()):
        if device_uuid(index) == uuid:
            return index
    raise CopyError(f"GPU {uuid} is not visible to this process (NVIDIA_VISIBLE_DEVICES?)")


def export_region(tensor: torch.Tensor, block_bytes: int) -> GpuRegionExport:
    """What another process needs to map `tensor` (contiguous, on a CUDA device, whole blocks)."""
    if not tensor.is_cuda or not tensor.is_contiguous():
        raise CopyError("only a contiguous CUDA tensor can be exported")
    nbytes = tensor.numel() * tensor.element_size()
    if block_bytes < 1 or nbytes % block_bytes:
        raise CopyError(f"{nbytes} bytes are not a whole number of {block_bytes}-byte blocks")
    device = tensor.device.index or 0
    pointer = tensor.data_ptr()
    base, size = cuda_ipc.address_range(pointer, device)
    if pointer + nbytes > base + size:
        raise CopyError("the tensor runs past the end of its allocation")
    handle = cuda_ipc.get_mem_handle(base, device)
    return GpuRegionExport(handle, pointer - base, nbytes, block_bytes, device_uuid(device))


class _Mapping:
    """An opened allocation; torch keeps it alive while a tensor over it exists, then it is closed."""

    def __init__(self, base: int, offset: int, nbytes: int, device: int) -> None:
        self.base, self.device = base, device
        self.__cuda_array_interface__: dict[str, Any] = {
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (base + offset, False),
            "strides": None,
            "version": 2,
        }

    def __del__(self) -> None:
        try:
            cuda_ipc.close_mem_handle(self.base, self.device)
        except Exception as exc:  # at interpreter exit the runtime may be gone already
            log.debug("closing an imported GPU region failed: %s", exc)


class ImportedRegion:
    """Another process's exported tensor, mapped here as a CUDA block space (`space`)."""

    def __init__(self, export: GpuRegionExport) -> None:
        self.device = device_for_uuid(export.device_uuid)
        base = cuda_ipc.open_mem_handle(export.handle, self.device)
        mapping = _Mapping(base, export.offset, export.nbytes, self.device)
        with torch.cuda.device(self.device):
            tensor = torch.as_tensor(mapping, device=torch.device("cuda", self.device))
        if tensor.data_ptr() != base + export.offset or tensor.numel() != export.nbytes:
            raise CopyError("torch did not wrap the mapped region where it was mapped")
        self.tensor = tensor
        self.space = BlockSpace.of_tensor(tensor, export.block_bytes)


@dataclass(frozen=True, slots=True)
class FlagWait:
    """A lane's stream waits until `flags[slot] >= value` (an engine `after=`)."""

    flags: FlagSlots
    slot: int
    value: int

    def enqueue_wait(self, stream: torch.cuda.Stream) -> None:
        self.flags.enqueue_wait(stream, self.slot, self.value)


@dataclass(frozen=True, slots=True)
class FlagSignal:
    """A lane's stream writes `flags[slot] = value` after the batch's copies (an engine `signal=`)."""

    flags: FlagSlots
    slot: int
    value: int

    def enqueue_signal(self, stream: torch.cuda.Stream) -> None:
        self.flags.enqueue_write(stream, self.slot, self.value)


class FlagSlots:
    """int64 completion flags in device memory, shareable with another process by memory handle."""

    def __init__(self, tensor: torch.Tensor, *, wait_timeout_s: float = 30.0) -> None:
        if not tensor.is_cuda or tensor.dtype != torch.int64 or tensor.dim() != 1:
            raise CopyError("flag slots are a 1-D int64 CUDA tensor")
        self.tensor = tensor
        self.device = tensor.device.index or 0
        self.wait_timeout_s = wait_timeout_s
        self.mem_ops = cuda_ipc.stream_mem_ops(self.device)
        self._poll_stream: torch.cuda.Stream | None = None

    @classmethod
    def create(cls, slots: int, device: int = 0) -> FlagSlots:
        """New zeroed slots on `device` (the exporting side)."""
        tensor = torch.zeros(slots, dtype=torch.int64, device=torch.device("cuda", device))
        torch.cuda.synchronize(device)
        return cls(tensor)

    @classmethod
    def open(cls, export: GpuRegionExport) -> FlagSlots:
        """Another process's slots (the importing side)."""
        return cls(ImportedRegion(export).tensor.view(torch.int64))

    def export(self) -> GpuRegionExport:
        return export_region(self.tensor, FLAG_BYTES)

    def address(self, slot: int) -> int:
        if not 0 <= slot < self.tensor.numel():
            raise CopyError(f"flag slot {slot} does not exist ({self.tensor.numel()} slots)")
        return self.tensor.data_ptr() + slot * FLAG_BYTES

    def wait(self, slot: int, value: int) -> FlagWait:
        self.address(slot)
        return FlagWait(self, slot, value)

    def signal(self, slot: int, value: int) -> FlagSignal:
        self.address(slot)
        return FlagSignal(self, slot, value)

    def enqueue_write(self, stream: torch.cuda.Stream, slot: int, value: int) -> None:
        """`flags[slot] = value` once the work queued on `stream` so far is done."""
        if self.mem_ops:
            cuda_ipc.stream_write_value(stream.cuda_stream, self.address(slot), value, self.device)
            return
        with torch.cuda.device(self.device), torch.cuda.stream(stream):
            self.tensor[slot].fill_(value)

    def enqueue_wait(self, stream: torch.cuda.Stream, slot: int, value: int) -> None:
        """Hold back the work queued on `stream` after this call until `flags[slot] >= value`."""
        if self.mem_ops:
            cuda_ipc.stream_wait_value(stream.cuda_stream, self.address(slot), value, self.device)
            return
        deadline = time.monotonic() + self.wait_timeout_s
        while self.read(slot) < value:
            if time.monotonic() > deadline:
                raise CopyError(f"flag slot {slot} did not reach {value} within {self.wait_timeout_s} s")
            time.sleep(POLL_INTERVAL_S)

    def read(self, slot: int) -> int:
        """The slot's current value, read on a private stream (never waits for other streams)."""
        self.address(slot)
        if self._poll_stream is None:
            self._poll_stream = new_stream(self.device)
        with torch.cuda.device(self.device), torch.cuda.stream(self._poll_stream):
            return int(self.tensor[slot].item())
