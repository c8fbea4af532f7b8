"""Block jobs, their per-key outcomes, and how a finished job reaches its submitter.

A job moves a list of blocks of one namespace: a store copies each source view into the block file
of its key, a load copies each key's block file into its destination view. Every accepted job is
reported exactly once, as a `JobResult` handed to the submitter's `CompletionSink`.

Threads:

* `BlockJob` is built and submitted on a connection thread (the socket server's, later).
* `JobState` is the tier's bookkeeping for one job. The submitting thread fills in the keys it can
  settle without I/O; after that only the pool touches it, under the pool's lock.
* The sink is called once, from whichever thread settles the job's last key: an I/O worker, the
  submitting thread (nothing needed I/O, or the job was refused), or the thread running shutdown.
  Sinks must be quick and must not call back into the tier while holding their own locks.
"""

import collections
import enum
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tieredkv_agent.store.naming import Namespace

log = logging.getLogger(__name__)


class JobKind(enum.Enum):
    STORE = "store"
    LOAD = "load"


class KeyStatus(enum.Enum):
    """What happened to one key of a job."""

    DONE = "done"
    """Transferred by this job: the block file was written (store) or read into the view (load)."""
    PRESENT = "present"
    """Store only: the block was already on the volume, or a concurrent store of the same key wrote it."""
    SKIPPED = "skipped"
    """Store only: not admitted by the reuse filter; nothing was written."""
    MISSING = "missing"
    """Load only: no block file (or a short one, which was deleted)."""
    FAILED = "failed"
    """An I/O error; the block file, if any, was left in place."""
    NO_SPACE = "no_space"
    """Store only: the volume is full (ENOSPC) or the writer's quota is spent (EDQUOT); nothing written."""
    REGION = "region"
    """The client's region could not be read or written (its file shrank): the block did not move."""
    REFUSED = "refused"
    """Store only: the store backlog was full; the block was dropped (a future miss, never a stall)."""
    CANCELLED = "cancelled"
    """The tier shut down before the block ran (or while it was stuck in I/O)."""

    @property
    def ok(self) -> bool:
        """True when the block is where the job wanted it: on the volume (store) or in the view (load)."""
        return self is KeyStatus.DONE or self is KeyStatus.PRESENT


@dataclass(frozen=True, slots=True)
class BlockJob:
    """One submitter's job: (key, buffer view) pairs of one namespace, identified by its job id.

    For a store the views are the sources, for a load the writable destinations. The views must stay
    valid (and, for a store, unchanged) until the job is reported finished. Job ids need only be
    unique per submitter: results go back to the submitter's own sink.
    """

    job_id: int
    namespace: Namespace
    blocks: Sequence[tuple[bytes, memoryview]]
    cancelled: threading.Event | None = None
    """Set by the submitter when it no longer wants the job (its connection dropped): blocks not yet
    started are then settled CANCELLED without I/O; running ones finish. The job is still reported."""


@dataclass(frozen=True, slots=True)
class JobResult:
    """A finished job: its id and kind, and one status per key in submission order."""

    job_id: int
    kind: JobKind
    keys: tuple[bytes, ...]
    statuses: tuple[KeyStatus, ...]
    transfer_bytes: int
    """Bytes this job itself wrote or read (keys with status DONE)."""
    elapsed_s: float
    """From acceptance to the last key settled."""

    @property
    def success(self) -> bool:
        """True iff every key is ok (see `KeyStatus.ok`)."""
        return all(status.ok for status in self.statuses)

    @property
    def key_success(self) -> tuple[bool, ...]:
        return tuple(status.ok for status in self.statuses)

    @property
    def successful_keys(self) -> list[bytes]:
        return [key for key, status in zip(self.keys, self.statuses, strict=True) if status.ok]


CompletionSink = Callable[[JobResult], None]
"""Receives each finished job exactly once; see the module docstring for the calling thread."""


class JobState:
    """The tier's bookkeeping for one accepted job (not thread-safe: the pool's lock guards it)."""

    __slots__ = (
        "cancelled",
        "job_id",
        "keys",
        "kind",
        "namespace",
        "paths",
        "remaining",
        "sink",
        "started",
        "statuses",
        "views",
    )

    def __init__(self, kind: JobKind, job: BlockJob, paths: Sequence[str], sink: CompletionSink) -> None:
        self.kind = kind
        self.job_id = job.job_id
        self.cancelled = job.cancelled
        self.namespace = job.namespace
        self.keys = tuple(key for key, _ in job.blocks)
        self.views = tuple(view for _, view in job.blocks)
        self.paths = tuple(paths)
        self.sink = sink
        self.statuses: list[KeyStatus | None] = [None] * len(self.keys)
        self.remaining = len(self.keys)
        self.started = time.monotonic()

    def settle(self, index: int, status: KeyStatus) -> bool:
        """Record the status of key `index` unless already settled; True if that was the last key."""
        if self.statuses[index] is not None:
            return False
        self.statuses[index] = status
        self.remaining -= 1
        return self.remaining == 0

    def unsettled(self) -> list[int]:
        return [index for index, status in enumerate(self.statuses) if status is None]

    def result(self) -> JobResult:
        statuses = tuple(status or KeyStatus.CANCELLED for status in self.statuses)
        moved = sum(
            view.nbytes for view, status in zip(self.views, statuses, strict=True) if status is KeyStatus.DONE
        )
        return JobResult(self.job_id, self.kind, self.keys, statuses, moved, time.monotonic() - self.started)


def deliver(state: JobState) -> None:
    """Hand the finished job to its sink; a failing sink is logged, never propagated (any thread)."""
    try:
        state.sink(state.result())
    except Exception:
        log.exception("completion sink failed for %s job %s", state.kind.value, state.job_id)


class CompletionQueue:
    """A thread-safe sink that buffers results for a submitter that polls (e.g. a socket connection).

    Any thread may put (it is the sink); the owning thread calls `drain` or `get`.
    """

    def __init__(self) -> None:
        self._results: collections.deque[JobResult] = collections.deque()
        self._ready = threading.Condition()

    def __call__(self, result: JobResult) -> None:
        with self._ready:
            self._results.append(result)
            self._ready.notify()

    def __len__(self) -> int:
        return len(self._results)

    def drain(self) -> list[JobResult]:
        """Every result queued so far, oldest first; never blocks."""
        with self._ready:
            results = list(self._results)
            self._results.clear()
        return results

    def get(self, timeout_s: float | None = None) -> JobResult | None:
        """The oldest result, waiting up to `timeout_s` for one; None on timeout."""
        with self._ready:
            if not self._ready.wait_for(lambda: bool(self._results), timeout_s):
                return None
            return self._results.popleft()
