"""A connection's Store and Load jobs, staged and run chunk by chunk within the staging budgets.

The agent never touches a client's region from user space (see `tieredkv_agent.engine.region`): a tier
whose `kernel_only_views` is true (the file tier) gets views of the mapped region, which only system
calls read or fill (in place); any other tier gets an agent-owned staging buffer. So that a job of any
size (a 32k-token prompt is gigabytes of KV) costs at most one chunk of memory, and in-place jobs are
bounded the same way, a job runs as consecutive chunks of at most `chunk_bytes`::

    stage chunk: reserve the budgets (this connection's, the agent's) ─ spent ─► wait (no refusal)
                 in place: views of the region's slots; staged: take a staging buffer, and a store
                 preads its slots from the region descriptor
    the tier runs the chunk as one BlockJob
    chunk done:  staged: a load pwrites the loaded blocks into the region, the buffer goes back;
                 in place: failed keys of a region that shrank are the region's fault (REGION);
                 budgets go back; the next chunk is staged, or the job's JobDone (and maybe a Drained)

Threads: the first chunk is staged on the connection's reader thread; every later step runs on its writer
thread (the outbox), where the tiers' completion sinks defer it. A chunk waiting for budget is retried on
the writer thread whenever budget comes back (this connection's, or another's via the server).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import TYPE_CHECKING

from tieredkv_agent.api.protocol import Load, ServerMessage, Store
from tieredkv_agent.api.session import job_done
from tieredkv_agent.engine.jobs import BlockJob, JobKind, JobResult, KeyStatus
from tieredkv_agent.engine.region import ClientRegion, RegionError, SlotViews, Staging

if TYPE_CHECKING:
    from tieredkv_agent.api.connection import Connection

log = logging.getLogger(__name__)


class StagedJob:
    """One Store or Load of a connection: its chunks, and the per-key outcome gathered so far."""

    def __init__(self, connection: Connection, message: Store | Load, region: ClientRegion) -> None:
        self.connection = connection
        self.message = message
        self.region = region
        self.kind = JobKind.LOAD if isinstance(message, Load) else JobKind.STORE
        count = len(message.keys)
        per = max(1, connection.chunk_bytes // region.block_bytes)
        self.chunks = collections.deque((start, min(start + per, count)) for start in range(0, count, per))
        self.statuses: list[KeyStatus] = [KeyStatus.CANCELLED] * count
        self.moved = 0
        self.started = time.monotonic()
        self.in_place = bool(getattr(connection.server.tier, "kernel_only_views", False))

    @property
    def next_chunk_bytes(self) -> int:
        start, end = self.chunks[0]
        return (end - start) * self.region.block_bytes

    def run_chunk(self) -> None:
        """Stage the next chunk (its budget already reserved) and hand it to the tier (reader or writer)."""
        start, end = self.chunks.popleft()
        connection, region = self.connection, self.region
        slots = self.message.slots[start:end]
        try:
            region.retain()
        except RegionError:  # the connection ended and its region is closed: nothing more moves
            connection.release_staging((end - start) * region.block_bytes)
            connection.outbox.defer(lambda _sendable: self.report())
            return
        staging = self._chunk_buffer(start, end, slots)
        if staging is None:
            return
        blocks = list(zip(self.message.keys[start:end], staging.views, strict=True))
        assert connection.namespace is not None  # jobs are accepted only after the Hello
        sub = BlockJob(self.message.job_id, connection.namespace, blocks, cancelled=connection.gone)

        def on_done(result: JobResult) -> None:
            """The tier finished the chunk (its threads): the rest happens on the writer thread."""
            connection.outbox.defer(lambda sendable: self.chunk_done(start, staging, result, sendable))

        submit = (
            connection.server.tier.submit_load
            if self.kind is JobKind.LOAD
            else connection.server.tier.submit_store
        )
        try:
            submit(sub, on_done)
        except Exception:
            self._chunk_failed(start, end, staging, KeyStatus.FAILED)

    def _chunk_buffer(self, start: int, end: int, slots: list[int]) -> Staging | SlotViews | None:
        """In place, the slots' views; else a staging buffer, which a store fills from the region.
        None when the chunk failed here (it is settled already)."""
        connection, region = self.connection, self.region
        in_place = region.slot_views(slots) if self.in_place else None
        if in_place is not None:
            return in_place
        try:
            staging = Staging(end - start, region.block_bytes, connection.server.staging)
        except (OSError, MemoryError) as exc:  # no memory for the chunk: its keys fail, nothing leaks
            log.error("%s: job %d: no memory to stage a chunk: %s", connection.name, self.message.job_id, exc)
            self._chunk_failed(start, end, None, KeyStatus.FAILED)
            return None
        if self.kind is JobKind.STORE:
            try:
                region.read_slots(slots, staging.base)
            except RegionError as exc:
                connection.server.refuse("region_io", f"{connection.name}: job {self.message.job_id}: {exc}")
                self._chunk_failed(start, end, staging, KeyStatus.REGION)
                return None
        return staging

    def _chunk_failed(
        self, start: int, end: int, staging: Staging | SlotViews | None, status: KeyStatus
    ) -> None:
        """The chunk never reached the tier: settle it and go on (reader or writer thread)."""
        result = JobResult(self.message.job_id, self.kind, (), tuple([status] * (end - start)), 0, 0.0)
        self.connection.outbox.defer(lambda sendable: self.chunk_done(start, staging, result, sendable))

    def chunk_done(
        self, start: int, staging: Staging | SlotViews | None, result: JobResult, sendable: bool
    ) -> list[ServerMessage]:
        """Write a load's blocks back, free the chunk, stage the next or report the job (writer thread)."""
        connection = self.connection
        statuses = list(result.statuses)
        try:
            if isinstance(staging, SlotViews):
                statuses = self._blame_region(statuses)
            elif self.kind is JobKind.LOAD and sendable and connection.alive and staging is not None:
                statuses = self._write_back(start, staging, statuses)
        finally:
            if staging is not None:
                staging.close()
            self.region.release()
            connection.release_staging(len(statuses) * self.region.block_bytes)
        self.statuses[start : start + len(statuses)] = statuses
        self.moved += sum(self.region.block_bytes for status in statuses if status is KeyStatus.DONE)
        if self.chunks and not connection.gone.is_set():
            connection.stage_or_wait(self)
            connection.resume_waiting()
            return []
        connection.resume_waiting()
        return self.report()

    def _write_back(self, start: int, staging: Staging, statuses: list[KeyStatus]) -> list[KeyStatus]:
        loaded = [index for index, status in enumerate(statuses) if status is KeyStatus.DONE]
        try:
            self.region.write_slots(self.message.slots[start : start + len(statuses)], staging.base, loaded)
        except RegionError as exc:
            self.connection.server.refuse(
                "region_io", f"{self.connection.name}: job {self.message.job_id}: {exc}"
            )
            return [KeyStatus.REGION if status.ok else status for status in statuses]
        return statuses

    def _blame_region(self, statuses: list[KeyStatus]) -> list[KeyStatus]:
        """In place: keys that failed while the region file was shrunk failed because of it (REGION)."""
        if KeyStatus.FAILED not in statuses or not self.region.shrunk():
            return statuses
        self.connection.server.refuse(
            "region_io", f"{self.connection.name}: job {self.message.job_id}: the region file shrank"
        )
        return [KeyStatus.REGION if status is KeyStatus.FAILED else status for status in statuses]

    def report(self) -> list[ServerMessage]:
        """The JobDone, and the Drained it completes, if any (writer thread); unsent chunks: CANCELLED."""
        self.chunks.clear()
        result = JobResult(
            self.message.job_id,
            self.kind,
            tuple(self.message.keys),
            tuple(self.statuses),
            self.moved,
            time.monotonic() - self.started,
        )
        replies: list[ServerMessage] = [job_done(result)]
        drained = self.connection.session.finish(self.message.job_id)
        if drained is not None:
            replies.append(drained)
        return replies


class StagingBudget:
    """A connection's staged bytes and its jobs waiting for budget (guarded by `lock`)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.staged = 0
        self.waiting: collections.deque[StagedJob] = collections.deque()
        self.lock = threading.Lock()

    def fits(self, nbytes: int) -> bool:
        """Whether a chunk of `nbytes` may be staged now (one chunk always may: a block can exceed it)."""
        return not self.staged or self.staged + nbytes <= self.limit
