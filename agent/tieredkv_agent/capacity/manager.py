"""The capacity manager: while this agent is the cache's GC leader, keep the volume under its watermarks.

One pass = scan (parallel, read-only) -> pressure -> evict LRU blocks down to the low watermark ->
sweep orphaned temp files and empty directories. Pressure comes from two limits, either of which
triggers eviction once it passes the high watermark:

* `max_bytes`: the block bytes (apparent sizes) of every namespace on the volume together;
* the filesystem itself (`statvfs` used / (used + available)), when `watch_filesystem` is on, so a
  volume shared with other writers cannot fill up unnoticed.

Threads: `start()` launches the elector's thread and the GC thread ("tieredkv-gc"), which runs a
pass every `scan_interval_s` while leader (and at once on becoming leader). `run_pass` may also be
called directly: by the CLI's main thread for `gc --dry-run` (read-only, no leadership needed) or a
one-shot `gc`. Passes never overlap. The counters and gauges below are plain attributes, written by
the thread running the pass and read by the metrics module from its own thread.
"""

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tieredkv_agent.capacity.evict import (
    EvictionPlan,
    EvictionResult,
    SweepResult,
    evict,
    plan_eviction,
    sweep,
)
from tieredkv_agent.capacity.leader import LeaderElector
from tieredkv_agent.capacity.scan import Cutoffs, ScanResult, Usage, scan_volume
from tieredkv_agent.capacity.scan_index import VolumeIndex

log = logging.getLogger(__name__)

FULL_GRACE_S = 1.0
"""The grace period while the volume is full: relief comes before protecting blocks a few seconds old."""
FULL_WINDOW_S = 60.0
"""How long after the last no-space store passes run in full-volume mode."""


@dataclass(frozen=True, slots=True)
class Pressure:
    """How far over its limits the volume is; `need_bytes` > 0 means evict that much."""

    usage_bytes: int
    max_bytes: int | None
    fs_used_bytes: int | None
    fs_size_bytes: int | None
    need_bytes: int
    trigger: str
    """"" (under both high watermarks), "max_bytes" or "filesystem"."""


def measure_pressure(
    usage_bytes: int, max_bytes: int | None, fs: tuple[int, int] | None, high: float, low: float
) -> Pressure:
    """Bytes to free so that each limit over `high` gets back to `low` (pure). `fs` = (used, size)."""
    need, trigger = 0, ""
    if max_bytes is not None and usage_bytes > high * max_bytes:
        need, trigger = usage_bytes - int(low * max_bytes), "max_bytes"
    if fs is not None and fs[1] > 0 and fs[0] > high * fs[1]:
        fs_need = fs[0] - int(low * fs[1])
        if fs_need > need:
            need, trigger = fs_need, "filesystem"
    used, size = fs if fs is not None else (None, None)
    return Pressure(usage_bytes, max_bytes, used, size, need, trigger)


def _plan_limit_ns(plan: EvictionPlan) -> int:
    """The newest mtime a block the plan may take can have: the end of its cutoff bucket, or the grace."""
    return min(plan.evictable_ns, (plan.cutoff_bucket + 1) * plan.width_ns - 1)


def filesystem_usage(path: str) -> tuple[int, int]:
    """(used, used + available to unprivileged writers) in bytes, as `df` computes Use%."""
    st = os.statvfs(path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return used, used + st.f_bavail * st.f_frsize


@dataclass(frozen=True, slots=True)
class PassReport:
    """Everything one pass saw and did; in a dry run, what it would have done."""

    dry_run: bool
    scan: ScanResult
    pressure: Pressure
    plan: EvictionPlan
    eviction: EvictionResult
    sweep: SweepResult
    duration_s: float

    def summary(self) -> dict[str, object]:
        """A JSON-ready digest (for logs and `gc --dry-run`); paths are the recorded samples."""
        return {
            "dry_run": self.dry_run,
            "usage": {"files": self.scan.files, "bytes": self.scan.bytes},
            "pressure": {"trigger": self.pressure.trigger, "need_bytes": self.pressure.need_bytes},
            "evicted": {"files": self.eviction.files, "bytes": self.eviction.bytes},
            "shortfall_bytes": self.plan.shortfall_bytes,
            "swept_temp_files": self.sweep.temp_files,
            "removed_dirs": self.sweep.dirs + self.eviction.removed_dirs,
            "unknown_files": self.scan.unknown_count,
            "scan_seconds": round(self.scan.duration_s, 3),
            "pass_seconds": round(self.duration_s, 3),
            "evicted_paths": list(self.eviction.paths),
            "swept_paths": list(self.sweep.paths),
            "unknown_paths": list(self.scan.unknown),
        }


class CapacityManager:
    """Keeps one cache volume under its watermarks while `elector` says this agent leads.

    Without an elector the manager is standalone: it always considers itself the leader (tests, a
    one-shot `gc`). Configuration (constructor keywords):

    max_bytes        block bytes allowed on the volume (all namespaces); None = filesystem only
    high_watermark   fraction of a limit above which a pass evicts (default 0.85)
    low_watermark    fraction of a limit a pass evicts down to (default 0.75)
    grace_s          blocks and directories modified more recently are never deleted (120 s)
    temp_timeout_s   temp files of stores older than this are orphans and deleted (600 s)
    scan_interval_s  seconds between passes while leader (30 s)
    scan_threads     worker threads for the scan and the eviction walk (4)
    full_scan_every  passes between scans that read every leaf again (20); the others re-read only
                     leaves whose directory changed (see `scan_index`)
    watch_filesystem also evict when the filesystem is past the high watermark (True)
    on_evicted       hears the path of every block file a pass deleted (eviction threads; None)
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        max_bytes: int | None = None,
        high_watermark: float = 0.85,
        low_watermark: float = 0.75,
        grace_s: float = 120.0,
        temp_timeout_s: float = 600.0,
        scan_interval_s: float = 30.0,
        scan_threads: int = 4,
        watch_filesystem: bool = True,
        elector: LeaderElector | None = None,
        clock: Callable[[], float] = time.time,
        fs_usage: Callable[[str], tuple[int, int]] = filesystem_usage,
        record_limit: int = 1000,
        on_evicted: Callable[[str], None] | None = None,
        full_scan_every: int = 20,
    ) -> None:
        if not 0 < low_watermark < high_watermark <= 1:
            raise ValueError("need 0 < low_watermark < high_watermark <= 1")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError("max_bytes must be positive (or None for the filesystem's size)")
        if min(grace_s, temp_timeout_s) < 0 or scan_interval_s <= 0 or min(scan_threads, full_scan_every) < 1:
            raise ValueError(
                "grace_s, temp_timeout_s >= 0; scan_interval_s > 0; scan_threads, full_scan_every >= 1"
            )
        self.root = os.fspath(root)
        self.max_bytes = max_bytes
        self.high_watermark = high_watermark
        self.low_watermark = low_watermark
        self.grace_s = grace_s
        self.temp_timeout_s = temp_timeout_s
        self.scan_interval_s = scan_interval_s
        self.scan_threads = scan_threads
        self.watch_filesystem = watch_filesystem
        self.record_limit = record_limit
        self.full_scan_every = full_scan_every
        self.on_evicted = on_evicted
        """Hears each block file a pass deleted (eviction threads): the KV events' BlockRemoved."""
        self.on_leader_gained: Callable[[], None] | None = None
        """Hears this agent becoming GC leader (the elector's thread): the KV events' snapshot walk."""
        self._elector = elector
        self._clock = clock
        self._fs_usage = fs_usage
        self._pass_lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._full_until = float("-inf")
        self._thread: threading.Thread | None = None
        self._index = VolumeIndex()
        """What the last passes recorded per leaf directory (passes hold `_pass_lock`)."""
        self._reset_metrics()

    def _reset_metrics(self) -> None:
        self.passes_total = 0
        self.pass_errors_total = 0
        self.evicted_files_total = 0
        self.evicted_bytes_total = 0
        self.swept_temp_files_total = 0
        self.swept_temp_bytes_total = 0
        self.removed_dirs_total = 0
        self.last_scan_duration_seconds = 0.0
        self.last_pass_duration_seconds = 0.0
        self.last_pass_timestamp_seconds = 0.0
        self.usage_bytes = 0
        self.usage_files = 0
        self.temp_files = 0
        self.unknown_files = 0
        self.shortfall_bytes = 0
        self.fs_used_bytes: int | None = None
        self.fs_size_bytes: int | None = None
        self.usage_by_namespace: dict[str, Usage] = {}
        """As scanned at the start of the last pass (before its deletions); replaced, never mutated."""

    @property
    def is_leader(self) -> bool:
        """True while this agent may delete (any thread)."""
        return self._elector.is_leader if self._elector is not None else True

    def config_summary(self) -> dict[str, object]:
        """The knobs, for the agent's start line."""
        names = ("max_bytes", "high_watermark", "low_watermark", "grace_s", "temp_timeout_s")
        more = ("scan_interval_s", "scan_threads", "watch_filesystem")
        return {name: getattr(self, name) for name in names + more}

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the GC thread and the elector (agent startup thread)."""
        if self._thread is not None:
            raise RuntimeError("capacity manager already started")
        self._thread = threading.Thread(target=self._loop, name="tieredkv-gc", daemon=True)
        self._thread.start()
        if self._elector is not None:
            self._elector.start(self._on_leader_change)

    def stop(self, *, release: bool = True) -> None:
        """Stop the GC thread (a running pass ends at its next directory), then the elector
        (agent shutdown thread); `release=False` leaves the Lease to expire, as a crash would."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        if self._elector is not None:
            self._elector.stop(release=release)

    def volume_full(self) -> None:
        """A store found no space (ENOSPC/EDQUOT): run a pass now, without the grace period blocking
        relief (I/O worker threads; never waits). Passes within FULL_WINDOW_S of the last call do the same."""
        self._full_until = self._clock() + FULL_WINDOW_S
        if not self._wake.is_set():
            self._wake.set()

    def _on_leader_change(self, leader: bool) -> None:
        """Elector thread: a new leader scans at once instead of after a full interval."""
        self._wake.set()
        if leader and self.on_leader_gained is not None:
            self.on_leader_gained()

    def _loop(self) -> None:
        """The GC thread."""
        while not self._stopping.is_set():
            self._wake.clear()  # a wake-up from here on (say, leadership gained mid-pass) is kept
            if self.is_leader:
                try:
                    self.run_pass()
                except Exception:
                    self.pass_errors_total += 1
                    log.exception("GC pass over %s failed", self.root)
            self._wake.wait(self.scan_interval_s)

    # -- one pass -------------------------------------------------------------------------------

    def run_pass(self, *, dry_run: bool = False) -> PassReport:
        """Scan, evict and sweep once (GC thread; or the CLI's main thread, usually as a dry run).

        A dry run deletes nothing, needs no leadership and leaves the metrics alone.
        """
        if not dry_run and not self.is_leader:
            raise RuntimeError("only the GC leader may delete; use dry_run=True to preview")
        with self._pass_lock:
            started = time.monotonic()
            full = self._clock() < self._full_until
            grace_s = min(self.grace_s, FULL_GRACE_S) if full else self.grace_s
            cutoffs = Cutoffs.at(self._clock(), grace_s, self.temp_timeout_s)
            if dry_run:
                index = VolumeIndex()  # a preview reads everything and leaves the passes' index alone
            elif self._index.passes >= self.full_scan_every:
                index = self._index = VolumeIndex()
            else:
                index = self._index
            scan = scan_volume(self.root, cutoffs, threads=self.scan_threads, index=index)
            fs = self._fs_usage(self.root) if self.watch_filesystem else None
            pressure = measure_pressure(
                scan.bytes, self.max_bytes, fs, self.high_watermark, self.low_watermark
            )
            need = pressure.need_bytes
            if full:  # a store found no space (a quota, say): free a watermark band even if none is crossed
                need = max(need, int(scan.bytes * (1 - self.low_watermark / self.high_watermark)))
            plan = plan_eviction(scan.evictable, need, cutoffs.evictable_ns)
            leaves = {} if plan.empty else index.candidate_leaves(self.root, _plan_limit_ns(plan))
            eviction = evict(
                plan,
                scan.prefix_dirs,
                threads=self.scan_threads,
                dry_run=dry_run,
                should_stop=self._should_stop if not dry_run else lambda: False,
                record_limit=self.record_limit,
                on_evicted=self.on_evicted,
                leaves=leaves,
            )
            index.invalidate(leaves)  # re-read what the walk visited: it saw fresher mtimes than recorded
            if dry_run or not self._should_stop():
                swept = sweep(scan.old_temps, scan.empty_dirs, cutoffs.orphan_temp_ns, dry_run=dry_run)
            else:
                swept = SweepResult()
            report = PassReport(dry_run, scan, pressure, plan, eviction, swept, time.monotonic() - started)
            if not dry_run:
                self._account(report)
            self._log(report)
            return report

    def _should_stop(self) -> bool:
        return self._stopping.is_set() or not self.is_leader

    def _account(self, report: PassReport) -> None:
        scan, eviction, swept = report.scan, report.eviction, report.sweep
        self.passes_total += 1
        self.evicted_files_total += eviction.files
        self.evicted_bytes_total += eviction.bytes
        self.swept_temp_files_total += swept.temp_files
        self.swept_temp_bytes_total += swept.temp_bytes
        self.removed_dirs_total += swept.dirs + eviction.removed_dirs
        self.last_scan_duration_seconds = scan.duration_s
        self.last_pass_duration_seconds = report.duration_s
        self.last_pass_timestamp_seconds = self._clock()
        self.usage_bytes = scan.bytes - eviction.bytes
        self.usage_files = scan.files - eviction.files
        self.temp_files = sum(u.temp_files for u in scan.usage.values()) - swept.temp_files
        self.unknown_files = scan.unknown_count
        self.shortfall_bytes = report.plan.shortfall_bytes
        self.fs_used_bytes = report.pressure.fs_used_bytes
        self.fs_size_bytes = report.pressure.fs_size_bytes
        self.usage_by_namespace = dict(scan.usage)

    def _log(self, report: PassReport) -> None:
        scan, eviction = report.scan, report.eviction
        if scan.unknown_count:
            log.warning(
                "%d unknown entries on %s (kept), e.g. %s", scan.unknown_count, self.root, scan.unknown[:3]
            )
        log.info(
            "GC pass%s: %d files / %d bytes scanned in %.2fs; %s %d files / %d bytes (%s); "
            "%d temp files, %d dirs; shortfall %d bytes",
            " (dry run)" if report.dry_run else "",
            scan.files,
            scan.bytes,
            scan.duration_s,
            "would evict" if report.dry_run else "evicted",
            eviction.files,
            eviction.bytes,
            report.pressure.trigger or "under the watermarks",
            report.sweep.temp_files,
            report.sweep.dirs + eviction.removed_dirs,
            report.plan.shortfall_bytes,
        )
