"""The CUDA lanes: one stream per direction and device, staged through pinned buffers when host memory is not.

::

    tkv-copy-<lane>        (dispatcher) waits for `after` on the lane's stream, queues the copies, records a
                           blocking-sync event, hands (batch, event) to the completion thread
    tkv-copy-<lane>-done   synchronizes those events in queue order and completes the batches (FIFO)

Copies between device memory and pinned host memory (the RAM pool, pinned buffers) are queued directly, one
`copy_(non_blocking=True)` per merged run. Pageable host memory (an instance's shared-memory region) goes
through two pinned staging halves of `staging_bytes / 2`:

    host → device   the dispatcher gathers pieces into a half (after that half's previous DMA finished),
                    then queues the DMA from it; the other half fills meanwhile
    device → host   the DMA into half k is queued, then half k-1 is waited for and scattered to the
                    destination by the dispatcher

A CUDA error in a batch fails that batch; a sticky error (illegal address) fails every later batch of the
process too, which is CUDA's rule, not the engine's. Only `copy/engine.py` imports this module, on the first
CUDA space.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import threading

import torch

from tieredkv_agent.copy.lanes import Complete, CopyBatch, Lane, copy_pieces
from tieredkv_agent.copy.plan import CopyError, Piece, split_runs
from tieredkv_agent.copy.typed import new_event, new_stream

log = logging.getLogger(__name__)


class _Stage:
    """One pinned staging half and the event of the last stream operation that used it."""

    __slots__ = ("buffer", "used")

    def __init__(self, nbytes: int) -> None:
        self.buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        self.used = new_event(blocking=True)


def _through_stage(batch: CopyBatch, group: list[Piece], stage: torch.Tensor, *, to_stage: bool) -> None:
    """Copy a group's pieces between one side of the batch and consecutive bytes of `stage`.

    `to_stage`: source pieces → stage (gather); else stage → destination pieces (scatter). A host side is
    copied with memmove on this thread, a device side is queued on the current stream (non-blocking).
    """
    other = batch.src if to_stage else batch.dst
    offset, stage_address = 0, stage.data_ptr()
    for piece in group:
        run = batch.runs[piece.run]
        block = run.src if to_stage else run.dst
        if other.is_cuda:
            staged = stage[offset : offset + piece.nbytes]
            there = other.flat(block, run.count)[piece.offset : piece.offset + piece.nbytes]
            (staged if to_stage else there).copy_(there if to_stage else staged, non_blocking=True)
        else:
            address = other.address(block) + piece.offset
            pair = (stage_address + offset, address) if to_stage else (address, stage_address + offset)
            ctypes.memmove(*pair, piece.nbytes)
        offset += piece.nbytes


class CudaLane(Lane):
    """Copies of one direction on one device, on a dedicated stream, completed in submission order."""

    def __init__(self, name: str, device: torch.device, complete: Complete, staging_bytes: int) -> None:
        check_device(device)
        self.device = device
        self._half = max(1, staging_bytes // 2)
        self._stages: tuple[_Stage, _Stage] | None = None
        with torch.cuda.device(device):
            self.stream = new_stream(device)
        self._inflight: collections.deque[tuple[CopyBatch, torch.cuda.Event, str | None]] = (
            collections.deque()
        )
        self._landed = threading.Condition()
        self._stopping = False
        self._completer = threading.Thread(
            target=self._complete_loop, name=f"tkv-copy-{name}-done", daemon=True
        )
        self._completer.start()
        super().__init__(name, complete)

    def run(self, batch: CopyBatch) -> None:
        """Queue the batch's copies on the lane's stream (the dispatcher thread).

        A batch that fails half-way is still completed only after what was queued for it has run, so no
        copy touches its spaces after it is reported.
        """
        error: str | None = None
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            try:
                self._queue_copies(batch)
            except CopyError as exc:
                error = str(exc)
            except RuntimeError as exc:
                error = f"CUDA error on lane {self.name}: {exc}"
            finished = new_event(blocking=True)
            finished.record(self.stream)
        with self._landed:
            self._inflight.append((batch, finished, error))
            self._landed.notify()

    def _queue_copies(self, batch: CopyBatch) -> None:
        src, dst = batch.src, batch.dst
        after = batch.after
        if isinstance(after, torch.cuda.Event):
            self.stream.wait_event(after)
        elif after is not None:
            after.enqueue_wait(self.stream)
        if not src.is_cuda and not src.pinned:
            self._staged_in(batch)
        elif not dst.is_cuda and not dst.pinned:
            self._staged_out(batch)
        else:
            copy_pieces(batch, split_runs(batch.runs, batch.block_bytes, 1 << 62)[0], non_blocking=True)
        if batch.signal is not None:
            batch.signal.enqueue_signal(self.stream)

    def _stage_pair(self) -> tuple[_Stage, _Stage]:
        if self._stages is None:
            self._stages = (_Stage(self._half), _Stage(self._half))
        return self._stages

    def _staged_in(self, batch: CopyBatch) -> None:
        """Pageable host → device through the staging halves (dispatcher thread, lane stream current)."""
        stages = self._stage_pair()
        for number, group in enumerate(split_runs(batch.runs, batch.block_bytes, self._half)):
            stage = stages[number % 2]
            stage.used.synchronize()  # the DMA that last read this half is done
            _through_stage(batch, group, stage.buffer, to_stage=True)
            _through_stage(batch, group, stage.buffer, to_stage=False)
            stage.used.record(self.stream)

    def _staged_out(self, batch: CopyBatch) -> None:
        """Device → pageable host through the staging halves (dispatcher thread, lane stream current)."""
        stages = self._stage_pair()
        groups = split_runs(batch.runs, batch.block_bytes, self._half)
        for number, group in enumerate(groups):
            stage = stages[number % 2]
            _through_stage(batch, group, stage.buffer, to_stage=True)
            stage.used.record(self.stream)
            if number:
                self._drain(batch, groups[number - 1], stages[(number - 1) % 2])
        self._drain(batch, groups[-1], stages[(len(groups) - 1) % 2])

    @staticmethod
    def _drain(batch: CopyBatch, group: list[Piece], stage: _Stage) -> None:
        stage.used.synchronize()
        _through_stage(batch, group, stage.buffer, to_stage=False)

    def _complete_loop(self) -> None:
        """Wait for each batch's event in queue order and complete it (the completion thread)."""
        while True:
            with self._landed:
                self._landed.wait_for(lambda: self._inflight or self._stopping)
                if not self._inflight:
                    return
                batch, finished, error = self._inflight[0]
            try:
                finished.synchronize()
            except RuntimeError as exc:
                error = error or f"CUDA error on lane {self.name}: {exc}"
            with self._landed:
                self._inflight.popleft()
            self.complete(batch, error)

    def close(self, timeout_s: float) -> list[CopyBatch]:
        """Stop the dispatcher (queued batches are returned), then let in-flight batches land."""
        left = super().close(timeout_s)
        if self._thread.is_alive():  # still queuing a batch: the completion thread must land it later
            return left
        with self._landed:
            self._stopping = True
            self._landed.notify_all()
        self._completer.join(timeout_s)
        return left


def check_device(device: torch.device) -> None:
    """CopyError unless `device` is a CUDA device this process can use."""
    if device.type != "cuda" or not torch.cuda.is_available():
        raise CopyError(f"{device} is not a usable CUDA device")
    if (device.index or 0) >= torch.cuda.device_count():
        raise CopyError(f"{device} does not exist here ({torch.cuda.device_count()} CUDA devices)")
