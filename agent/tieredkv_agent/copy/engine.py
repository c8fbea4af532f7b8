"""The copy engine: batched block copies between block spaces, one FIFO lane per direction.

::

    submit(src, src_blocks, dst, dst_blocks)          (any thread; never waits for a copy)
      ├─ plan_runs: check indices, merge runs   ─ bad ─► batch failed now, engine unchanged
      └─ lane by direction:  host    host ↔ host          HostLane, pieces over the CPU helper threads
                             h2d:N   host → cuda:N        CudaLane (copy/cuda.py), its own stream
                             d2h:N   cuda:N → host        CudaLane, its own stream
                             d2d:N   cuda ↔ cuda:N        CudaLane, its own stream
    finished batch ─► on_done(batch) if given, else kept for poll()

Every batch is completed exactly once: by its lane's thread (host lane), its lane's completion thread
(CUDA lanes), the submitting thread (refused at submit) or the thread running `close` (still queued).
Batches of one lane complete in submission order. A failed batch leaves the engine usable, except after a
CUDA error that poisons the device context (then every later CUDA batch fails too).

torch is imported by this module; import it only where copies are wanted (the agent does so only when a
RAM tier is configured). The CUDA lanes are imported on the first CUDA space.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
from collections.abc import Callable, Sequence

import torch

from tieredkv_agent.copy.lanes import CopyBatch, Dependency, Helpers, HostLane, Lane, StreamSignal
from tieredkv_agent.copy.plan import CopyError, plan_runs
from tieredkv_agent.copy.spaces import BlockSpace
from tieredkv_agent.copy.typed import new_event

log = logging.getLogger(__name__)

DEFAULT_STAGING_BYTES = 64 << 20
"""Pinned staging per CUDA lane that needs it (two halves, so host copies overlap the DMA)."""


def default_cpu_threads() -> int:
    """Copy threads of the host lane: up to 4, never more than the CPUs this process may use."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def lane_key(src: BlockSpace, dst: BlockSpace) -> str:
    """The lane a copy between these spaces runs on."""
    if src.is_cuda and dst.is_cuda:
        return f"d2d:{dst.device.index or 0}"
    if dst.is_cuda:
        return f"h2d:{dst.device.index or 0}"
    if src.is_cuda:
        return f"d2h:{src.device.index or 0}"
    return "host"


class CopyEngine:
    """Copies lists of blocks between spaces; one instance per process is enough."""

    def __init__(self, *, cpu_threads: int | None = None, staging_bytes: int = DEFAULT_STAGING_BYTES) -> None:
        """No thread starts until the first batch of a lane (any thread may build the engine)."""
        threads = default_cpu_threads() if cpu_threads is None else cpu_threads
        if threads < 1 or staging_bytes < 2:
            raise ValueError("cpu_threads and staging_bytes must be positive")
        self.cpu_threads = threads
        self.staging_bytes = staging_bytes
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._lanes: dict[str, Lane] = {}
        self._helpers: Helpers | None = None
        self._finished: collections.deque[CopyBatch] = collections.deque()
        self._ids = itertools.count(1)
        self._pending = 0
        self._closed = False

    def submit(
        self,
        src: BlockSpace,
        src_blocks: Sequence[int],
        dst: BlockSpace,
        dst_blocks: Sequence[int],
        *,
        after: Dependency | torch.cuda.Stream | None = None,
        signal: StreamSignal | None = None,
        on_done: Callable[[CopyBatch], None] | None = None,
    ) -> CopyBatch:
        """Queue a copy of `src_blocks[i]` to `dst_blocks[i]` for every i; never raises for bad input.

        `after`: the copies start once that CUDA event fired, or after the work queued on that stream so far
        (recorded now), or once that StreamWait is satisfied. `signal` is written after the copies (CUDA
        lanes). A refused batch is returned already failed (and `on_done` already called).
        """
        batch = CopyBatch(next(self._ids), (src, dst), on_done, None, signal)
        with self._lock:
            self._pending += 1
        try:
            if src.block_bytes != dst.block_bytes:
                raise CopyError(f"block sizes differ: {src.block_bytes} (source) vs {dst.block_bytes}")
            batch.runs = plan_runs(
                src_blocks,
                dst_blocks,
                src_size=src.num_blocks,
                dst_size=dst.num_blocks,
                coalesce=src.strided and dst.strided,
            )
            batch.nbytes = len(dst_blocks) * dst.block_bytes
            batch.after = _dependency(after)
            lane = self._lane(lane_key(src, dst))
        except CopyError as exc:
            self._complete(batch, str(exc))
            return batch
        except RuntimeError as exc:  # torch/CUDA refusing a stream, device or event
            self._complete(batch, f"{type(exc).__name__}: {exc}")
            return batch
        if not batch.runs:
            self._complete(batch, None)
        elif not lane.put(batch):
            self._complete(batch, "the copy engine is closed")
        return batch

    def copy(
        self,
        src: BlockSpace,
        src_blocks: Sequence[int],
        dst: BlockSpace,
        dst_blocks: Sequence[int],
        timeout_s: float | None = None,
    ) -> None:
        """Submit and wait; CopyError if the batch failed (a convenience for tests and tools)."""
        self.submit(src, src_blocks, dst, dst_blocks).result(timeout_s)

    def poll(self) -> list[CopyBatch]:
        """Finished batches that had no `on_done`, oldest first; never blocks (any thread)."""
        with self._lock:
            done = list(self._finished)
            self._finished.clear()
        return done

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until every submitted batch completed; False on timeout (control threads)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Fail queued batches, wait up to `timeout_s` per lane for running ones, stop the threads."""
        with self._lock:
            self._closed = True
            lanes = list(self._lanes.values())
            helpers, self._helpers = self._helpers, None
        for lane in lanes:
            for batch in lane.close(timeout_s):
                self._complete(batch, "the copy engine is closed")
        if helpers is not None:
            helpers.close()

    def _lane(self, key: str) -> Lane:
        with self._lock:
            lane = self._lanes.get(key)
            if lane is not None:
                return lane
            if self._closed:
                raise CopyError("the copy engine is closed")
            lane = self._make_lane(key)
            self._lanes[key] = lane
            return lane

    def _make_lane(self, key: str) -> Lane:
        """A new lane (under the engine's lock)."""
        if key == "host":
            if self._helpers is None:
                self._helpers = Helpers(self.cpu_threads - 1)
            return HostLane(self._complete, self._helpers)
        from tieredkv_agent.copy.cuda import CudaLane

        index = key.partition(":")[2]
        return CudaLane(key, torch.device("cuda", int(index)), self._complete, self.staging_bytes)

    def _complete(self, batch: CopyBatch, error: str | None) -> None:
        """Finish a batch and hand it over (lane, completion or submitting threads)."""
        if not batch.finish(error):
            return
        if error is not None:
            log.debug("copy batch %s failed: %s", batch.batch_id, error)
        if batch.on_done is None:
            with self._lock:
                self._finished.append(batch)
        else:
            try:
                batch.on_done(batch)
            except Exception:
                log.exception("copy batch %s: completion callback failed", batch.batch_id)
        with self._idle:
            self._pending -= 1
            if self._pending == 0:
                self._idle.notify_all()


def _dependency(after: Dependency | torch.cuda.Stream | None) -> Dependency | None:
    """A stream becomes an event recorded on it now, so the copies follow exactly the work queued so far."""
    if isinstance(after, torch.cuda.Stream):
        event = new_event()
        event.record(after)
        return event
    return after
