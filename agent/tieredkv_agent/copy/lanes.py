"""Copy batches and the lanes that run them: one FIFO lane per direction, each with its own thread.

::

    submit ──► CopyBatch ──► lane queue (FIFO) ──► tkv-copy-<lane> thread ──► copies ──► complete(batch)
                                                        │  host lane: pieces split over tkv-copy-cpu<i>
                                                        └  CUDA lanes: see copy/cuda.py

Threads:

* `CopyBatch` is built on the submitting thread; after `Lane.put` only the lane touches it until it is
  completed. `done`, `wait`, `result` may be called from any thread.
* each lane's thread runs its batches one after another, so batches of one direction finish in the
  order they were submitted;
* the host lane hands pieces of a batch to the helper threads and runs the first piece itself;
* `Lane.close` runs on the thread closing the engine.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from tieredkv_agent.copy.plan import CopyError, Piece, Run, even_target, split_runs
from tieredkv_agent.copy.spaces import BlockSpace

log = logging.getLogger(__name__)

MIN_PIECE_BYTES = 1 << 20
"""Below about 1 MiB a copy is cheaper than handing it to another thread."""


class StreamWait(Protocol):
    """Something a CUDA stream can be told to wait for (e.g. another process's completion flag)."""

    def enqueue_wait(self, stream: torch.cuda.Stream) -> None: ...


class StreamSignal(Protocol):
    """Something a CUDA stream writes once the batch's copies are done (e.g. a completion flag)."""

    def enqueue_signal(self, stream: torch.cuda.Stream) -> None: ...


Dependency = torch.cuda.Event | StreamWait
"""What a batch waits for before copying: a CUDA event of the producer, or a StreamWait."""


class CopyBatch:
    """One submitted copy: blocks of a source space to blocks of a destination space.

    Completed exactly once: `error` is None on success, else the reason. The engine drops its references
    to both spaces when the batch completes, so the memory behind them may go away after that.
    """

    __slots__ = (
        "_done",
        "_spaces",
        "after",
        "batch_id",
        "block_bytes",
        "error",
        "lane",
        "nbytes",
        "on_done",
        "runs",
        "signal",
    )

    def __init__(
        self,
        batch_id: int,
        spaces: tuple[BlockSpace, BlockSpace],
        on_done: Callable[[CopyBatch], None] | None,
        after: Dependency | None = None,
        signal: StreamSignal | None = None,
    ) -> None:
        self.batch_id = batch_id
        self._spaces: tuple[BlockSpace, BlockSpace] | None = spaces
        self.block_bytes = spaces[0].block_bytes
        self.on_done = on_done
        self.after = after
        self.signal = signal
        self.runs: list[Run] = []
        self.nbytes = 0
        self.lane = ""
        self.error: str | None = None
        self._done = threading.Event()

    @property
    def src(self) -> BlockSpace:
        if self._spaces is None:
            raise CopyError(f"batch {self.batch_id} is finished; its spaces were released")
        return self._spaces[0]

    @property
    def dst(self) -> BlockSpace:
        if self._spaces is None:
            raise CopyError(f"batch {self.batch_id} is finished; its spaces were released")
        return self._spaces[1]

    @property
    def ok(self) -> bool:
        """True once finished without error."""
        return self._done.is_set() and self.error is None

    def done(self) -> bool:
        """Finished (either way); never blocks."""
        return self._done.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until finished; False on timeout."""
        return self._done.wait(timeout_s)

    def result(self, timeout_s: float | None = None) -> None:
        """Wait, then raise CopyError if the batch failed or did not finish in time."""
        if not self._done.wait(timeout_s):
            raise CopyError(f"batch {self.batch_id} did not finish within {timeout_s} s")
        if self.error is not None:
            raise CopyError(self.error)

    def finish(self, error: str | None) -> bool:
        """Record the outcome and release the spaces; False if it was already finished (engine only)."""
        if self._done.is_set():
            return False
        self.error = error
        self._spaces = None
        self.after = None
        self.signal = None
        self._done.set()
        return True


Complete = Callable[[CopyBatch, str | None], None]


def host_pieces(batch: CopyBatch, pieces: Sequence[Piece]) -> None:
    """Copy pieces between two host spaces with memmove (releases the GIL; the plan checked every index).

    Faster than `Tensor.copy_` for this: no tensor per piece and no OpenMP team per calling thread, which
    matters when several copy threads run at once (bench/copy_engine.py).
    """
    src, dst, runs = batch.src, batch.dst, batch.runs
    for piece in pieces:
        run = runs[piece.run]
        ctypes.memmove(dst.address(run.dst) + piece.offset, src.address(run.src) + piece.offset, piece.nbytes)


def copy_pieces(batch: CopyBatch, pieces: Sequence[Piece], *, non_blocking: bool = False) -> None:
    """Copy the given pieces of a batch with `Tensor.copy_`, on the calling thread or CUDA stream."""
    src, dst, runs = batch.src, batch.dst, batch.runs
    for piece in pieces:
        run = runs[piece.run]
        end = piece.offset + piece.nbytes
        target = dst.flat(run.dst, run.count)[piece.offset : end]
        target.copy_(src.flat(run.src, run.count)[piece.offset : end], non_blocking=non_blocking)


class Lane:
    """A FIFO of batches run one at a time by the lane's own thread; subclasses implement `run`."""

    def __init__(self, name: str, complete: Complete) -> None:
        self.name = name
        self.complete = complete
        self._queue: collections.deque[CopyBatch] = collections.deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"tkv-copy-{name}", daemon=True)
        self._thread.start()

    def put(self, batch: CopyBatch) -> bool:
        """Queue a batch (submitting threads); False once the lane is closed."""
        with self._ready:
            if self._closed:
                return False
            batch.lane = self.name
            self._queue.append(batch)
            self._ready.notify()
        return True

    def _loop(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return
                batch = self._queue.popleft()
            try:
                self.run(batch)
            except CopyError as exc:
                self.complete(batch, str(exc))
            except Exception as exc:
                log.exception("copy lane %s: batch %s failed", self.name, batch.batch_id)
                self.complete(batch, f"{type(exc).__name__}: {exc}")

    def run(self, batch: CopyBatch) -> None:
        """Copy the batch and complete it, or raise (the lane's thread)."""
        raise NotImplementedError

    def close(self, timeout_s: float) -> list[CopyBatch]:
        """Stop taking batches; return the queued ones (not started) and wait for the running one."""
        with self._ready:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._ready.notify_all()
        self._thread.join(timeout_s)
        return left


class Helpers:
    """`count` daemon threads (tkv-copy-cpu<i>) that run the pieces the host lane hands them."""

    def __init__(self, count: int) -> None:
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._loop, name=f"tkv-copy-cpu{number}", daemon=True)
            for number in range(count)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def count(self) -> int:
        return len(self._threads)

    def _loop(self) -> None:
        while (task := self._tasks.get()) is not None:
            task()

    def run_all(self, tasks: Sequence[Callable[[], None]]) -> list[BaseException]:
        """Run every task, the first on the calling thread and the rest on helpers; the errors raised."""
        errors: list[BaseException] = []
        remaining = [len(tasks)]
        finished = threading.Condition()

        def wrapped(task: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    task()
                except BaseException as exc:
                    errors.append(exc)
                finally:
                    with finished:
                        remaining[0] -= 1
                        finished.notify()

            return run

        for task in tasks[1:]:
            self._tasks.put(wrapped(task))
        if tasks:
            wrapped(tasks[0])()
        with finished:
            finished.wait_for(lambda: remaining[0] == 0)
        return errors

    def close(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)


class HostLane(Lane):
    """Host memory to host memory: pieces of about equal size copied by the helpers and the lane thread."""

    def __init__(self, complete: Complete, helpers: Helpers) -> None:
        self._helpers = helpers
        super().__init__("host", complete)

    def run(self, batch: CopyBatch) -> None:
        after = batch.after
        if isinstance(after, torch.cuda.Event):
            after.synchronize()
        elif after is not None:
            raise CopyError("a stream wait needs a CUDA lane; host copies can only follow a CUDA event")
        if batch.signal is not None:
            raise CopyError("a stream signal needs a CUDA lane")
        parts = self._helpers.count + 1
        target = even_target(batch.nbytes, parts, MIN_PIECE_BYTES)
        groups = split_runs(batch.runs, batch.block_bytes, target)
        errors = self._helpers.run_all([functools.partial(host_pieces, batch, group) for group in groups])
        if errors:
            first = errors[0]
            raise CopyError(f"host copy failed: {type(first).__name__}: {first}")
        self.complete(batch, None)
