"""The shared-volume file tier: vLLM `fs`-compatible block files behind the agent's pools and index.

::

    lookup        -> admission.observe(request, keys) ; index.lookup -> HIT / MISS / RETRY
    submit_store  -> known present? PRESENT | not admitted? SKIPPED | else pool (dedup, backlog)
                       -> BlockFiles.store -> index.add
    submit_load   -> pool (read priority) -> BlockFiles.load -> index.add, or index.mark_missing

Threads: see `tieredkv_agent.tiers.base`; block I/O runs on the pool's `tkv-io-*` workers and existence
checks on the index's `tkv-index-*` threads.
"""

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tieredkv_agent.capacity.touch import touch_on_hit
from tieredkv_agent.engine.admission import DEFAULT_MAX_TRACKER_SIZE, AdmissionFilter, AdmissionStats
from tieredkv_agent.engine.index import IndexStats, LookupIndex, LookupResult
from tieredkv_agent.engine.jobs import BlockJob, CompletionSink, JobKind, JobState, KeyStatus
from tieredkv_agent.engine.pools import DualPriorityPool, PoolStats
from tieredkv_agent.store.blockio import (
    DEFAULT_OPS,
    BlockFiles,
    Durability,
    FileOps,
    LoadStatus,
    StoreStatus,
    probe_o_direct,
)
from tieredkv_agent.store.naming import Namespace, RunConfig, ensure_namespace, namespace_for
from tieredkv_agent.tiers.touches import TouchQueue

log = logging.getLogger(__name__)

DEFAULT_READ_THREADS = 4
DEFAULT_WRITE_THREADS = 4
"""bench/agent_io.py: throughput rises from 1 to 4 threads and is flat from 4 to 8 on a 2-vCPU node with a
local disk; a network volume needs more requests in flight, so 4 + 4 costs nothing here and helps there."""
DEFAULT_MAX_STORE_BACKLOG_BYTES = 1 << 30
"""About 0.3-0.5 s of stores at this machine's 2-4 GB/s; beyond that a store is dropped, not queued."""

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""A store failing with these found the volume full (or the writer's quota spent): KeyStatus.NO_SPACE."""
NO_SPACE_LOG_INTERVAL_S = 10.0

BlockTimer = Callable[[str, float], None]
"""Hears the duration of each block store or load: (op, seconds) (I/O worker threads)."""


def _no_timer(op: str, seconds: float) -> None:
    """The default `BlockTimer`: nothing is observed."""


def _nothing() -> None:
    """The default `on_no_space`: nobody is told."""


BlockFileHook = Callable[[Namespace, bytes, bool], None]
"""Hears (namespace, offload key, True) for each block file a store of this tier published, and
(..., False) for each one a load found short and deleted (I/O worker threads; must not block)."""


def _no_file_hook(namespace: Namespace, key: bytes, present: bool) -> None:
    """The default `on_block_file`: nobody is told."""


_STORE_STATUS = {
    StoreStatus.STORED: KeyStatus.DONE,
    StoreStatus.ALREADY_PRESENT: KeyStatus.PRESENT,
    StoreStatus.IO_ERROR: KeyStatus.FAILED,
}
_LOAD_STATUS = {
    LoadStatus.OK: KeyStatus.DONE,
    LoadStatus.MISSING: KeyStatus.MISSING,
    LoadStatus.SHORT_DELETED: KeyStatus.MISSING,
    LoadStatus.IO_ERROR: KeyStatus.FAILED,
}


@dataclass(frozen=True, slots=True)
class FileTierStats:
    pool: PoolStats
    index: IndexStats
    admission: AdmissionStats
    stores_known_present: int
    """Store keys settled PRESENT from the index, without a syscall."""
    stores_skipped: int
    """Store keys not admitted by the reuse filter."""
    store_bytes_skipped: int


class _BlockIO:
    """The pool's block handler: one file per block, with the index kept up to date."""

    def __init__(
        self,
        files: BlockFiles,
        index: LookupIndex,
        timer: BlockTimer,
        on_no_space: Callable[[], None],
        on_block_file: BlockFileHook = _no_file_hook,
        *,
        touched: Callable[[str], object] = touch_on_hit,
    ) -> None:
        self._files = files
        self._touched = touched
        self._on_block_file = on_block_file
        self._index = index
        self._timer = timer
        self._tell_no_space = on_no_space
        self._no_space_logged = -NO_SPACE_LOG_INTERVAL_S

    def _on_no_space(self) -> None:
        """A store found the volume full: tell the capacity manager, log at most every 10 s."""
        self._tell_no_space()
        now = time.monotonic()
        if now - self._no_space_logged >= NO_SPACE_LOG_INTERVAL_S:
            self._no_space_logged = now
            log.error("the cache volume is full (ENOSPC/EDQUOT): stores fail until GC frees space")

    def _tell(self, namespace: Namespace, key: bytes, *, present: bool) -> None:
        """Tell `on_block_file` (the KV events) of a new or deleted file; its failure fails no job."""
        try:
            self._on_block_file(namespace, key, present)
        except Exception:
            log.exception("the on_block_file hook failed")

    def run_block(self, state: JobState, index: int) -> KeyStatus:
        """Store or load one block (I/O worker threads)."""
        key, path, view = state.keys[index], state.paths[index], state.views[index]
        started = time.monotonic()
        try:
            return self._run(state, key, path, view)
        finally:
            self._timer(state.kind.value, time.monotonic() - started)

    def _run(self, state: JobState, key: bytes, path: str, view: memoryview) -> KeyStatus:
        if state.kind is JobKind.STORE:
            stored = self._files.store(path, view)
            if stored.ok:
                self._index.add(state.namespace, (key,))
                if stored.status is StoreStatus.STORED:
                    self._tell(state.namespace, key, present=True)
                return _STORE_STATUS[stored.status]
            if stored.errno in NO_SPACE_ERRNOS:
                self._on_no_space()
                return KeyStatus.NO_SPACE
            log.warning("store of %s failed: %s", path, stored.detail)
            return _STORE_STATUS[stored.status]
        loaded = self._files.load(path, view)
        if loaded.ok:
            self._index.add(state.namespace, (key,))
            self._touched(path)  # keeps GC's least-recently-used order true across nodes (throttled)
        else:
            self._index.mark_missing(state.namespace, (key,))
            if loaded.status is LoadStatus.SHORT_DELETED:
                self._tell(state.namespace, key, present=False)
            if loaded.status is not LoadStatus.MISSING:
                log.warning("load of %s failed (%s): %s", path, loaded.status.value, loaded.detail)
        return _LOAD_STATUS[loaded.status]


class FileTier:
    """Block files on the shared volume, byte-compatible with vLLM's `fs` tier (registry type "file")."""

    tier_type: ClassVar[str] = "file"
    kernel_only_views: ClassVar[bool] = True
    """Job views reach only system calls (O_DIRECT or buffered write/preadv of whole, page-aligned blocks;
    a bounce copy only for unaligned views): the socket server may hand it views of a client's mapped
    region (`tieredkv_agent.engine.region`)."""

    def __init__(
        self,
        *,
        root_dir: str | os.PathLike[str],
        read_threads: int = DEFAULT_READ_THREADS,
        write_threads: int = DEFAULT_WRITE_THREADS,
        max_store_backlog_bytes: int = DEFAULT_MAX_STORE_BACKLOG_BYTES,
        shutdown_timeout_s: float = 5.0,
        negative_ttl_s: float = 1.0,
        index_max_keys: int = 2_000_000,
        stat_threads: int = 1,
        scan_on_first_use: bool = True,
        store_threshold: int = 0,
        max_tracker_size: int = DEFAULT_MAX_TRACKER_SIZE,
        durability: Durability | str = Durability.NONE,
        direct: bool | None = None,
        ops: FileOps = DEFAULT_OPS,
        clock: Callable[[], float] = time.monotonic,
        background_index: bool = True,
        block_timer: BlockTimer = _no_timer,
        on_no_space: Callable[[], None] = _nothing,
        writer_tag: str = "",
        on_block_file: BlockFileHook = _no_file_hook,
    ) -> None:
        """Probe the volume, start the I/O and index threads (agent's main thread).

        `direct=None` probes `root_dir` for O_DIRECT. `clock` and `background_index=False` are for tests.
        `block_timer` hears each block's I/O time (the agent's histogram); `on_no_space` is called on
        every store that found the volume full (I/O worker threads; it must not wait); `writer_tag` tags
        the temp file names (see `tieredkv_agent.store.writers`); `on_block_file` hears each block file this
        tier's stores published or its loads deleted as short (I/O worker threads; the KV events).
        """
        self.root_dir = Path(root_dir)
        self.root_dir.mkdir(parents=True, exist_ok=True)
        use_direct = probe_o_direct(self.root_dir, ops=ops) if direct is None else direct
        self._files = BlockFiles(
            direct=use_direct, durability=Durability(durability), ops=ops, writer_tag=writer_tag
        )
        self._shutdown_timeout_s = shutdown_timeout_s
        self._index = LookupIndex(
            ops=ops,
            negative_ttl_s=negative_ttl_s,
            max_keys=index_max_keys,
            stat_threads=stat_threads,
            scan_on_first_use=scan_on_first_use,
            clock=clock,
            background=background_index,
        )
        self._touches = TouchQueue(touch_on_hit)
        try:
            self._admission = AdmissionFilter(threshold=store_threshold, max_tracker_size=max_tracker_size)
            handler = _BlockIO(
                self._files, self._index, block_timer, on_no_space, on_block_file, touched=self._touches.put
            )
            self._pool = DualPriorityPool(
                handler,
                read_threads=read_threads,
                write_threads=write_threads,
                max_store_backlog_bytes=max_store_backlog_bytes,
            )
        except ValueError:
            self._index.close()
            self._touches.close(1.0)
            raise
        self._counts_lock = threading.Lock()
        self._known_present = 0
        self._skipped = 0
        self._skipped_bytes = 0

    @property
    def index(self) -> LookupIndex:
        return self._index

    @property
    def direct(self) -> bool:
        return self._files.direct

    def namespace(self, config: RunConfig) -> Namespace:
        """The namespace of `config` under this tier's root, with its config.json written (any thread)."""
        namespace = namespace_for(self.root_dir, config)
        ensure_namespace(namespace)
        return namespace

    def lookup(
        self, namespace: Namespace, keys: Sequence[bytes], request_id: str | None = None
    ) -> list[LookupResult]:
        """HIT / MISS / RETRY per key (connection threads).

        With admission on, every key that is not a HIT counts once for `request_id` (keys already on the
        volume need no counting, and leaving them out keeps the tracker for the keys that do).
        """
        answers = self._index.lookup(namespace, keys)
        if request_id is not None and self._admission.enabled:
            space, hit = namespace.blocks_dir, LookupResult.HIT
            wanted = [(space, key) for key, answer in zip(keys, answers, strict=True) if answer is not hit]
            self._admission.observe(request_id, wanted)
        return answers

    def submit_store(self, job: BlockJob, on_done: CompletionSink) -> None:
        """Settle known-present and non-admitted keys now, queue the rest (connection threads)."""
        state = self._state(JobKind.STORE, job, on_done)
        known = self._index.known_present(job.namespace, state.keys)
        candidates = [index for index, present in enumerate(known) if not present]
        for index in (index for index, present in enumerate(known) if present):
            state.settle(index, KeyStatus.PRESENT)
        space = job.namespace.blocks_dir
        verdicts = self._admission.admit([(space, state.keys[index]) for index in candidates])
        todo = [index for index, admitted in zip(candidates, verdicts, strict=True) if admitted]
        skipped = [index for index, admitted in zip(candidates, verdicts, strict=True) if not admitted]
        for index in skipped:
            state.settle(index, KeyStatus.SKIPPED)
        with self._counts_lock:
            self._known_present += len(known) - len(candidates)
            self._skipped += len(skipped)
            self._skipped_bytes += sum(state.views[index].nbytes for index in skipped)
        self._pool.submit(state, todo)

    def submit_load(self, job: BlockJob, on_done: CompletionSink) -> None:
        """Queue every block of the job for the read-priority workers (connection threads)."""
        state = self._state(JobKind.LOAD, job, on_done)
        self._pool.submit(state, range(len(state.keys)))

    def _state(self, kind: JobKind, job: BlockJob, on_done: CompletionSink) -> JobState:
        for key, view in job.blocks:
            if not key or not view.c_contiguous or view.nbytes == 0:
                raise ValueError(f"job {job.job_id}: keys must be non-empty, views contiguous and non-empty")
            if kind is JobKind.LOAD and view.readonly:
                raise ValueError(f"job {job.job_id}: load destinations must be writable")
        paths = [job.namespace.block_path(key) for key, _ in job.blocks]
        return JobState(kind, job, paths, on_done)

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every submitted job was reported (control thread)."""
        return self._pool.wait_idle(timeout_s)

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Cancel queued blocks, wait up to the timeout for running ones, stop all threads (main thread)."""
        timeout = self._shutdown_timeout_s if timeout_s is None else timeout_s
        self._pool.shutdown(timeout)
        self._touches.close(timeout)
        self._index.close()

    def stats(self) -> FileTierStats:
        with self._counts_lock:
            counts = (self._known_present, self._skipped, self._skipped_bytes)
        return FileTierStats(self._pool.stats(), self._index.stats(), self._admission.stats(), *counts)
