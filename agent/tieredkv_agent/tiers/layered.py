"""The RAM pool layered over the file tier: one `Tier` for the socket server, RAM consulted first.

::

    lookup       pool.contains ─ ready ─► HIT
                              └ else ──► lower.lookup (file index, admission)
    submit_store reserve pool slots ──► engine: views → slots ─► commit        ┐ the job is reported once,
                 lower.submit_store (write-through: files as before) ───────────┘ when both parts finished,
                                                                                  with the files' statuses
    submit_load  pool.acquire ─ hits ──► engine: slots → views ─► DONE (no file is read)
                              │                 └ copy failed ─► lower.submit_load (fallback)
                              └ misses ─► lower.submit_load ─► DONE keys: reserve, engine: views → slots
                                                               (cached before the job is reported, while
                                                               the destination views are still valid)

Threads: as for every tier (see `tieredkv_agent.tiers.base`). The parts of one job finish on the lower
tier's I/O workers and the copy engine's lane threads; whichever finishes last reports the job, exactly
once, and nothing blocks a connection thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tieredkv_agent.copy.engine import CopyEngine
from tieredkv_agent.copy.plan import CopyError
from tieredkv_agent.copy.spaces import views_space
from tieredkv_agent.engine.index import LookupResult
from tieredkv_agent.engine.jobs import BlockJob, CompletionSink, JobKind, JobResult, KeyStatus
from tieredkv_agent.store.naming import Namespace, RunConfig
from tieredkv_agent.tiers.file import FileTier, FileTierStats
from tieredkv_agent.tiers.kernel_copy import KernelCopier, address
from tieredkv_agent.tiers.ram import RamPool, RamStats

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LayeredStats:
    ram: RamStats
    file: FileTierStats


class _Job:
    """One job in flight: per-key statuses filled by its parts, reported when the last part ends."""

    __slots__ = ("_lock", "_parts", "job", "kind", "on_done", "started", "statuses", "tier")

    def __init__(self, tier: LayeredTier, kind: JobKind, job: BlockJob, on_done: CompletionSink) -> None:
        self.tier, self.kind, self.job, self.on_done = tier, kind, job, on_done
        self.statuses: list[KeyStatus | None] = [None] * len(job.blocks)
        self.started = time.monotonic()
        self._parts = 1  # the submitting call itself, ended by `part_done` at its end
        self._lock = threading.Lock()

    @property
    def space(self) -> Path:
        return self.job.namespace.blocks_dir

    def keys(self, indices: Sequence[int]) -> list[bytes]:
        return [self.job.blocks[index][0] for index in indices]

    def views(self, indices: Sequence[int]) -> list[memoryview]:
        return [self.job.blocks[index][1] for index in indices]

    def settle(self, indices: Sequence[int], statuses: Sequence[KeyStatus]) -> None:
        with self._lock:
            for index, status in zip(indices, statuses, strict=True):
                self.statuses[index] = status

    def add_part(self) -> None:
        with self._lock:
            self._parts += 1

    def part_done(self) -> None:
        """One part ended; the last one reports the job (whichever thread that is)."""
        with self._lock:
            self._parts -= 1
            last = self._parts == 0
        if last:
            self.tier.report(self)

    def result(self) -> JobResult:
        statuses = tuple(status or KeyStatus.CANCELLED for status in self.statuses)
        moved = sum(
            view.nbytes
            for (_, view), status in zip(self.job.blocks, statuses, strict=True)
            if status is KeyStatus.DONE
        )
        keys = tuple(key for key, _ in self.job.blocks)
        return JobResult(self.job.job_id, self.kind, keys, statuses, moved, time.monotonic() - self.started)


class LayeredTier:
    """A RAM pool over the shared-volume file tier (the agent's tier when `ram_tier_bytes` > 0)."""

    tier_type: ClassVar[str] = "layered"

    def __init__(
        self,
        *,
        ram: RamPool,
        lower: FileTier,
        engine: CopyEngine | None = None,
        kernel: KernelCopier | bool | None = True,
    ) -> None:
        """Compose the tiers (agent's main thread); the engine is made here unless one is given.

        `kernel`: True probes for kernel copies between pool and job views (pool <-> region in one copy,
        no staging); False copies with the engine only; a KernelCopier is used as given (tests)."""
        self.ram = ram
        self.lower = lower
        self.engine = engine or CopyEngine()
        self._kernel = KernelCopier.probe() if kernel is True else (kernel or None)
        self.kernel_only_views = self._kernel is not None
        """With kernel copies, pool <-> job views never run in user space: the socket server may hand this
        tier views of a client's mapped region (in place, `tieredkv_agent.engine.region`)."""
        self._lock = threading.Condition()
        self._in_flight = 0
        self._closed = False

    @property
    def root_dir(self) -> Path:
        return self.lower.root_dir

    def namespace(self, config: RunConfig) -> Namespace:
        return self.lower.namespace(config)

    def lookup(
        self, namespace: Namespace, keys: Sequence[bytes], request_id: str | None = None
    ) -> list[LookupResult]:
        """HIT for keys ready in RAM, the file tier's answer for the others (connection threads)."""
        in_ram = self.ram.contains(namespace.blocks_dir, keys)
        rest = [index for index, present in enumerate(in_ram) if not present]
        answers = [LookupResult.HIT] * len(keys)
        if rest:
            lower = self.lower.lookup(namespace, [keys[index] for index in rest], request_id)
            for index, answer in zip(rest, lower, strict=True):
                answers[index] = answer
        return answers

    def submit_store(self, job: BlockJob, on_done: CompletionSink) -> None:
        """Write through: the files as before, and a copy into RAM for keys it does not hold yet."""
        state = self._accept(JobKind.STORE, job, on_done)
        if state is None:
            return
        cached = self._reserve(state, range(len(job.blocks)))
        state.add_part()
        try:
            self.lower.submit_store(job, lambda result: self._lower_done(state, result, None))
        except Exception:
            self._unreserve(state, cached, failed=False)
            self._forget()
            raise
        if cached:
            self._to_ram(state, cached, "store")
        state.part_done()

    def submit_load(self, job: BlockJob, on_done: CompletionSink) -> None:
        """Serve what RAM holds by memory copy, the rest from the files (then cached)."""
        state = self._accept(JobKind.LOAD, job, on_done)
        if state is None:
            return
        keys = state.keys(range(len(job.blocks)))
        same_size = self.ram.accepts(job.blocks[0][1].nbytes, len(keys)) if self._one_size(job) else False
        slots = self.ram.acquire(state.space, keys) if same_size else [None] * len(keys)
        hits = [index for index, slot in enumerate(slots) if slot is not None]
        misses = [index for index, slot in enumerate(slots) if slot is None]
        if misses:
            try:
                self._from_lower(state, misses)
            except Exception:
                self.ram.release(state.space, state.keys(hits))
                self._forget()
                raise
        if hits:
            self._from_ram(state, hits, [slot for slot in slots if slot is not None])
        state.part_done()

    def _accept(self, kind: JobKind, job: BlockJob, on_done: CompletionSink) -> _Job | None:
        """Check the job as the file tier would, count it in flight; None if cancelled (closed)."""
        for key, view in job.blocks:
            if not key or not view.c_contiguous or view.nbytes == 0:
                raise ValueError(f"job {job.job_id}: keys must be non-empty, views contiguous and non-empty")
            if kind is JobKind.LOAD and view.readonly:
                raise ValueError(f"job {job.job_id}: load destinations must be writable")
        state = _Job(self, kind, job, on_done)
        with self._lock:
            closed = self._closed
            if not closed:
                self._in_flight += 1
        if closed or not job.blocks:
            if not closed:
                self._forget()
            state.settle(range(len(job.blocks)), [KeyStatus.CANCELLED] * len(job.blocks))
            self._deliver(state)
            return None
        return state

    @staticmethod
    def _one_size(job: BlockJob) -> bool:
        size = job.blocks[0][1].nbytes
        return all(view.nbytes == size for _, view in job.blocks)

    def _reserve(self, state: _Job, indices: Sequence[int]) -> list[tuple[int, int]]:
        """(job index, pool slot) for the given keys that the pool will take now."""
        if not indices or not self._one_size(state.job):
            return []
        if not self.ram.accepts(state.job.blocks[indices[0]][1].nbytes, len(indices)):
            return []
        slots = self.ram.reserve(state.space, state.keys(indices))
        return [(index, slot) for index, slot in zip(indices, slots, strict=True) if slot is not None]

    def _unreserve(self, state: _Job, cached: list[tuple[int, int]], *, failed: bool) -> None:
        self.ram.abort(state.space, state.keys([index for index, _ in cached]), failed=failed)

    def _kernel_copy(self, call: str, slots: Sequence[int], views: Sequence[memoryview]) -> int | None:
        """Blocks copied whole, in order, between pool slots and views by the kernel; None: use the engine
        (no kernel copier, or read-only views, which only in-process callers pass)."""
        if self._kernel is None or any(view.readonly for view in views):
            return None
        try:
            space = self.ram.space
            local = [space.address(slot) for slot in slots]
            return self._kernel.copy(call, local, [address(view) for view in views], space.block_bytes)
        except (OSError, CopyError, TypeError, ValueError) as exc:
            log.warning("kernel copy of %d blocks failed: %s", len(slots), exc)
            return 0

    def _to_ram(self, state: _Job, cached: list[tuple[int, int]], source: str) -> None:
        """Copy job views into their reserved slots; commit or abort when the copy ends (a part)."""
        indices = [index for index, _ in cached]
        done = self._kernel_copy("process_vm_readv", [slot for _, slot in cached], state.views(indices))
        if done is not None:  # synchronous: commit the blocks copied whole, abort the rest
            if done:
                self.ram.commit(state.space, state.keys(indices[:done]), source=source)
            if done < len(cached):
                self._unreserve(state, cached[done:], failed=True)
            return

        def copied(error: str | None) -> None:
            if error is None:
                self.ram.commit(state.space, state.keys(indices), source=source)
            else:
                log.warning("caching %d blocks in RAM failed: %s", len(indices), error)
                self._unreserve(state, cached, failed=True)
            state.part_done()

        state.add_part()
        try:
            src, src_blocks = views_space(state.views(indices))
        except CopyError as exc:
            copied(str(exc))
            return
        slots = [slot for _, slot in cached]
        self.engine.submit(src, src_blocks, self.ram.space, slots, on_done=lambda batch: copied(batch.error))

    def _from_ram(self, state: _Job, hits: list[int], slots: list[int]) -> None:
        """Copy pool slots into the job's views (a part); fall back to the files if the copy fails."""
        done = self._kernel_copy("process_vm_writev", slots, state.views(hits))
        if done is not None:
            self._from_ram_copied(state, hits, done)
            return

        def copied(error: str | None) -> None:
            self.ram.release(state.space, state.keys(hits))
            if error is None:
                state.settle(hits, [KeyStatus.DONE] * len(hits))
            else:
                log.warning("loading %d blocks from RAM failed (%s); reading files", len(hits), error)
                self.ram.count_failures(len(hits))
                try:
                    self._from_lower(state, hits, cache=False)
                except Exception:
                    log.exception("job %s: the file tier refused the fallback", state.job.job_id)
                    state.settle(hits, [KeyStatus.FAILED] * len(hits))
            state.part_done()

        state.add_part()
        try:
            dst, dst_blocks = views_space(state.views(hits))
        except CopyError as exc:
            copied(str(exc))
            return
        self.engine.submit(self.ram.space, slots, dst, dst_blocks, on_done=lambda batch: copied(batch.error))

    def _from_ram_copied(self, state: _Job, hits: list[int], done: int) -> None:
        """The kernel copied the first `done` hits whole: they are loaded; the rest come from the files."""
        self.ram.release(state.space, state.keys(hits))
        state.settle(hits[:done], [KeyStatus.DONE] * done)
        rest = hits[done:]
        if not rest:
            return
        self.ram.count_failures(len(rest))
        try:
            self._from_lower(state, rest, cache=False)
        except Exception:
            log.exception("job %s: the file tier refused the fallback", state.job.job_id)
            state.settle(rest, [KeyStatus.FAILED] * len(rest))

    def _from_lower(self, state: _Job, indices: list[int], *, cache: bool = True) -> None:
        """Load keys from the files (a part); cache what was read before the job is reported."""
        sub = BlockJob(state.job.job_id, state.job.namespace, [state.job.blocks[index] for index in indices])
        state.add_part()
        try:
            self.lower.submit_load(sub, lambda result: self._lower_done(state, result, indices, cache))
        except Exception:
            state.part_done()
            raise

    def _lower_done(
        self, state: _Job, result: JobResult, indices: list[int] | None, cache: bool = False
    ) -> None:
        """The file tier reported its part (its I/O workers, or the submitting thread)."""
        positions = list(range(len(state.job.blocks))) if indices is None else indices
        state.settle(positions, result.statuses)
        if cache:
            loaded = [index for index, status in zip(positions, result.statuses, strict=True) if status.ok]
            cached = self._reserve(state, loaded)
            if cached:
                self._to_ram(state, cached, "load")
        state.part_done()

    def report(self, state: _Job) -> None:
        """Every part of the job ended: report it (the thread that ended the last part)."""
        self._deliver(state)
        self._forget()

    @staticmethod
    def _deliver(state: _Job) -> None:
        try:
            state.on_done(state.result())
        except Exception:
            log.exception("completion sink failed for %s job %s", state.kind.value, state.job.job_id)

    def _forget(self) -> None:
        with self._lock:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._lock.notify_all()

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every submitted job was reported (control thread)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._in_flight == 0, timeout_s)

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Cancel new work, shut the file tier down, let copies end, then free the pool (main thread)."""
        with self._lock:
            self._closed = True
        self.lower.shutdown(timeout_s)
        wait = 5.0 if timeout_s is None else timeout_s
        self.engine.wait_idle(wait)
        self.engine.close(wait)
        if self.drain(wait):
            self.ram.close()
        else:
            log.warning("jobs still in flight after %.1f s; the RAM pool stays allocated", wait)

    def stats(self) -> LayeredStats:
        return LayeredStats(self.ram.stats(), self.lower.stats())
