"""Dual-priority I/O thread pool: every block of every job is its own task.

::

    submit(state, todo) ─┬─▶ [ loads  deque ] ◀── read-priority workers  tkv-io-r<i>: loads first, then stores
                         └─▶ [ stores deque ] ◀── write-priority workers tkv-io-w<i>: stores first, then loads
                                  one lock, two conditions (work, idle); a task = (JobState, key index)
    worker: handler.run_block(state, i) -> KeyStatus ─settle─▶ last key of its job? ─▶ sink(JobResult), once

vLLM's fs tier runs a job as one sequential task; here the blocks of one job spread over all workers.

* Store backlog: bytes of store tasks queued and not yet started. A store job that would take it past
  `max_store_backlog_bytes` is refused whole (every key REFUSED, reported at once, counted); a job
  that finds the store queue empty is always taken. Submitting never waits.
* De-duplication: a store of a path that is already queued or running (from any job, or earlier in the
  same job) is not queued again; it settles when the first one does (PRESENT if that one succeeded).
* Shutdown: queued tasks are cancelled at once; running ones get `timeout_s` to finish; whatever is
  still unsettled after that is reported CANCELLED and the stuck workers are abandoned (daemon threads).
"""

import collections
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from tieredkv_agent.engine.jobs import JobKind, JobState, KeyStatus, deliver

log = logging.getLogger(__name__)

Task = tuple[JobState, int]


class BlockHandler(Protocol):
    def run_block(self, state: JobState, index: int) -> KeyStatus:
        """Do the I/O of key `index` of `state` (I/O worker threads, many at once).

        An exception counts as FAILED (and is logged); it never reaches the submitter.
        """
        ...


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of the pool's queues and counters."""

    read_threads: int
    write_threads: int
    queued_loads: int
    queued_stores: int
    queued_store_bytes: int
    running_blocks: int
    active_jobs: int
    refused_jobs: int
    refused_bytes: int
    deduplicated_blocks: int
    settled_blocks: Mapping[tuple[JobKind, KeyStatus], int]
    """Keys of finished jobs, by job kind and status."""
    settled_bytes: Mapping[tuple[JobKind, KeyStatus], int]
    """Bytes of those keys' blocks, by job kind and status."""


class DualPriorityPool:
    """Runs block tasks of store and load jobs on read- and write-priority worker threads."""

    def __init__(
        self,
        handler: BlockHandler,
        *,
        read_threads: int,
        write_threads: int,
        max_store_backlog_bytes: int,
        name: str = "tkv-io",
    ) -> None:
        """Start the workers (startup thread)."""
        if read_threads < 0 or write_threads < 0 or read_threads + write_threads < 1:
            raise ValueError("need at least one I/O thread and no negative thread count")
        if max_store_backlog_bytes <= 0:
            raise ValueError("max_store_backlog_bytes must be positive")
        self._handler = handler
        self._max_backlog = max_store_backlog_bytes
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._loads: collections.deque[Task] = collections.deque()
        self._stores: collections.deque[Task] = collections.deque()
        self._flights: dict[str, list[Task]] = {}
        self._active: set[JobState] = set()
        self._queued_store_bytes = 0
        self._running = 0
        self._closing = False
        self._refused_jobs = 0
        self._refused_bytes = 0
        self._deduplicated = 0
        self._settled: collections.Counter[tuple[JobKind, KeyStatus]] = collections.Counter()
        self._settled_bytes: collections.Counter[tuple[JobKind, KeyStatus]] = collections.Counter()
        self._threads = [
            threading.Thread(target=self._worker, args=(True,), name=f"{name}-r{i}", daemon=True)
            for i in range(read_threads)
        ] + [
            threading.Thread(target=self._worker, args=(False,), name=f"{name}-w{i}", daemon=True)
            for i in range(write_threads)
        ]
        self._read_threads, self._write_threads = read_threads, write_threads
        for thread in self._threads:
            thread.start()

    # -- submitting (connection threads) -----------------------------------------------------------

    def submit(self, state: JobState, todo: Sequence[int]) -> bool:
        """Queue the keys `todo` of `state`; every other key must already be settled.

        Called from connection threads; never waits for I/O or queue space. Returns False when the job
        was refused (backlog full) or cancelled (pool shut down). Either way, and also when `todo` is
        empty, the job is reported exactly once, possibly before this returns.
        """
        finished: list[JobState] = []
        with self._lock:
            accepted = self._accept_locked(state, todo, finished)
        for done in finished:
            deliver(done)
        return accepted

    def _accept_locked(self, state: JobState, todo: Sequence[int], finished: list[JobState]) -> bool:
        if self._closing:
            self._settle_all_locked(state, todo, KeyStatus.CANCELLED, finished)
            return False
        if state.kind is JobKind.LOAD:
            self._loads.extend((state, index) for index in todo)
            queued = len(todo)
        else:
            leads, follows = self._split_duplicates_locked(state, todo)
            nbytes = sum(state.views[index].nbytes for index in leads)
            if nbytes and self._queued_store_bytes and self._queued_store_bytes + nbytes > self._max_backlog:
                self._refused_jobs += 1
                self._refused_bytes += nbytes
                self._settle_all_locked(state, todo, KeyStatus.REFUSED, finished)
                return False
            for index in leads:
                self._flights[state.paths[index]] = []
            for index in follows:
                self._flights[state.paths[index]].append((state, index))
            self._deduplicated += len(follows)
            self._stores.extend((state, index) for index in leads)
            self._queued_store_bytes += nbytes
            queued = len(leads)
        if state.remaining == 0:
            self._finish_locked(state, finished)
            return True
        self._active.add(state)
        if queued:
            self._work.notify(queued)
        return True

    def _split_duplicates_locked(self, state: JobState, todo: Sequence[int]) -> tuple[list[int], list[int]]:
        """(keys to write, keys whose path is already being written by this or another job)."""
        leads: list[int] = []
        follows: list[int] = []
        seen: set[str] = set()
        for index in todo:
            path = state.paths[index]
            if path in self._flights or path in seen:
                follows.append(index)
            else:
                seen.add(path)
                leads.append(index)
        return leads, follows

    # -- settling (any thread, under the lock) ------------------------------------------------------

    def _complete_locked(self, task: Task, status: KeyStatus, finished: list[JobState]) -> None:
        """Settle a task and, for a store, every duplicate that waited for it."""
        state, index = task
        if state.kind is JobKind.STORE:
            follower_status = KeyStatus.PRESENT if status.ok else status
            for waiting, waiting_index in self._flights.pop(state.paths[index], ()):
                self._settle_locked(waiting, waiting_index, follower_status, finished)
        self._settle_locked(state, index, status, finished)

    def _settle_all_locked(
        self, state: JobState, indices: Sequence[int], status: KeyStatus, finished: list[JobState]
    ) -> None:
        for index in indices:
            self._settle_locked(state, index, status, finished)
        if state.remaining == 0 and not indices:
            self._finish_locked(state, finished)

    def _settle_locked(
        self, state: JobState, index: int, status: KeyStatus, finished: list[JobState]
    ) -> None:
        if state.settle(index, status):
            self._finish_locked(state, finished)

    def _finish_locked(self, state: JobState, finished: list[JobState]) -> None:
        self._active.discard(state)
        for status, view in zip(state.statuses, state.views, strict=True):
            self._settled[state.kind, status or KeyStatus.CANCELLED] += 1
            self._settled_bytes[state.kind, status or KeyStatus.CANCELLED] += view.nbytes
        finished.append(state)
        if not self._active:
            self._idle.notify_all()

    # -- workers ------------------------------------------------------------------------------------

    def _worker(self, prefer_loads: bool) -> None:
        """Body of one I/O thread: settle the previous task and take the next one, in one lock hold
        unless a job finished (its sink is called before this thread waits for more work)."""
        first, second = (self._loads, self._stores) if prefer_loads else (self._stores, self._loads)
        task: Task | None = None
        status = KeyStatus.FAILED
        while True:
            finished: list[JobState] = []
            with self._lock:
                if task is not None:
                    self._running -= 1
                    self._complete_locked(task, status, finished)
                if not finished:
                    task = self._next_task_locked(first, second)
            if finished:
                for done in finished:
                    deliver(done)
                with self._lock:
                    task = self._next_task_locked(first, second)
            if task is None:
                return
            status = self._run(task)

    def _next_task_locked(
        self, first: collections.deque[Task], second: collections.deque[Task]
    ) -> Task | None:
        while not first and not second:
            if self._closing:
                return None
            self._work.wait()
        task = first.popleft() if first else second.popleft()
        state, index = task
        if state.kind is JobKind.STORE:
            self._queued_store_bytes -= state.views[index].nbytes
        self._running += 1
        return task

    def _run(self, task: Task) -> KeyStatus:
        state, index = task
        if state.cancelled is not None and state.cancelled.is_set() and not self._awaited(task):
            return KeyStatus.CANCELLED
        try:
            return self._handler.run_block(state, index)
        except Exception:
            log.exception("%s of block %d of job %s failed", state.kind.value, index, state.job_id)
            return KeyStatus.FAILED

    def _awaited(self, task: Task) -> bool:
        """True if a store of another job waits on this one's write of the same path (an I/O worker)."""
        state, index = task
        if state.kind is not JobKind.STORE:
            return False
        with self._lock:
            return any(waiting is not state for waiting, _ in self._flights.get(state.paths[index], ()))

    # -- draining and shutdown (control threads) ----------------------------------------------------

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until every accepted job has been reported; False on timeout (control thread)."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._active, timeout_s)

    def shutdown(self, timeout_s: float) -> int:
        """Cancel queued work, give running blocks `timeout_s`, then fail the rest (agent's main thread).

        Returns the number of workers still stuck in I/O. Every job is reported before this returns;
        later submissions are reported CANCELLED at once. Idempotent.
        """
        finished: list[JobState] = []
        with self._lock:
            self._closing = True
            for queue in (self._loads, self._stores):
                while queue:
                    task = queue.popleft()
                    if task[0].kind is JobKind.STORE:
                        self._queued_store_bytes -= task[0].views[task[1]].nbytes
                    self._complete_locked(task, KeyStatus.CANCELLED, finished)
            self._work.notify_all()
        for done in finished:
            deliver(done)
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = sum(thread.is_alive() for thread in self._threads)
        self._cancel_unsettled()
        if stuck:
            log.warning(
                "I/O pool shut down with %d worker(s) still stuck in I/O after %.1f s", stuck, timeout_s
            )
        return stuck

    def _cancel_unsettled(self) -> None:
        finished: list[JobState] = []
        with self._lock:
            for state in list(self._active):
                self._settle_all_locked(state, state.unsettled(), KeyStatus.CANCELLED, finished)
            self._flights.clear()
        for done in finished:
            deliver(done)

    def stats(self) -> PoolStats:
        """A consistent snapshot (any thread; takes the lock briefly)."""
        with self._lock:
            return PoolStats(
                read_threads=self._read_threads,
                write_threads=self._write_threads,
                queued_loads=len(self._loads),
                queued_stores=len(self._stores),
                queued_store_bytes=self._queued_store_bytes,
                running_blocks=self._running,
                active_jobs=len(self._active),
                refused_jobs=self._refused_jobs,
                refused_bytes=self._refused_bytes,
                deduplicated_blocks=self._deduplicated,
                settled_blocks=dict(self._settled),
                settled_bytes=dict(self._settled_bytes),
            )
