"""Deleting least-recently-used blocks, orphaned temp files and empty directories.

Threads: everything here is called from the GC thread (or the CLI's main thread for a dry run);
`evict` fans the walk out to its own small thread pool, one `<h[0:3]>` directory per task.

LRU is by mtime, which every agent refreshes on a load hit (`touch.TouchThrottle`). From the scan's
histogram, `plan_eviction` picks a cutoff bucket: every evictable block in an older bucket goes, and
blocks in the cutoff bucket go until a byte budget is used up. The walk re-stats each block just
before deleting it, so a block that was loaded (touched) or rewritten since the scan survives, and
nothing younger than the grace period is ever deleted.

Deleting a block that a loader is reading is safe: loaders open the file and then read it, and an
unlinked file stays readable through an open descriptor; a load that opens after the unlink misses.
(On NFS that holds for readers on the deleting node; a reader on another node may get ESTALE, a
failed load that vLLM and the agent both turn into a miss. The client's `.nfs*` placeholders are
unknown files to the scan and are left to the NFS client.)
"""

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tieredkv_agent.capacity import layout
from tieredkv_agent.capacity.scan import PREFIXES_PER_TASK, MtimeHistogram


@dataclass(frozen=True, slots=True)
class EvictionPlan:
    """Which evictable blocks to delete: all in buckets < `cutoff_bucket`, and up to `cutoff_budget`
    bytes of those in the cutoff bucket. `shortfall_bytes` is what even deleting all could not free."""

    need_bytes: int
    width_ns: int
    cutoff_bucket: int
    cutoff_budget: int
    evictable_ns: int
    expected_files: int
    expected_bytes: int
    shortfall_bytes: int

    @property
    def empty(self) -> bool:
        return self.expected_bytes == 0 and self.expected_files == 0


def plan_eviction(histogram: MtimeHistogram, need_bytes: int, evictable_ns: int) -> EvictionPlan:
    """The oldest buckets that free at least `need_bytes` (pure; any thread)."""
    width = histogram.width_ns
    if need_bytes <= 0 or not histogram.buckets:
        return EvictionPlan(max(need_bytes, 0), width, -(2**62), 0, evictable_ns, 0, 0, max(need_bytes, 0))
    files = freed = 0
    for key in sorted(histogram.buckets):
        bucket_files, bucket_bytes = histogram.buckets[key]
        if freed + bucket_bytes >= need_bytes:
            budget = need_bytes - freed
            share = budget / bucket_bytes if bucket_bytes else 1.0
            expected_files = files + max(1, round(bucket_files * share))
            return EvictionPlan(need_bytes, width, key, budget, evictable_ns, expected_files, need_bytes, 0)
        files += bucket_files
        freed += bucket_bytes
    last = max(histogram.buckets) + 1
    return EvictionPlan(need_bytes, width, last, 0, evictable_ns, files, freed, need_bytes - freed)


@dataclass(slots=True)
class EvictionResult:
    """What an eviction walk deleted (or, in a dry run, would have deleted)."""

    files: int = 0
    bytes: int = 0
    removed_dirs: int = 0
    paths: list[str] = field(default_factory=list)
    """The first `record_limit` deleted block paths, in walk (not age) order."""
    stopped: bool = False
    """True when `should_stop` ended the walk early (leadership lost or shutdown)."""

    def merge(self, other: "EvictionResult", record_limit: int) -> None:
        self.files += other.files
        self.bytes += other.bytes
        self.removed_dirs += other.removed_dirs
        self.paths.extend(other.paths[: max(0, record_limit - len(self.paths))])
        self.stopped = self.stopped or other.stopped


EvictedHook = Callable[[str], None]
"""Hears the path of each block file an eviction deleted (eviction worker threads; must not block)."""


def _no_hook(path: str) -> None:
    """The default `EvictedHook`: nobody is told."""


class _Walk:
    """State shared by the eviction workers: the plan, the cutoff bucket's remaining budget."""

    def __init__(
        self,
        plan: EvictionPlan,
        *,
        dry_run: bool,
        should_stop: Callable[[], bool],
        record_limit: int,
        on_evicted: EvictedHook = _no_hook,
    ) -> None:
        self.plan = plan
        self.on_evicted = on_evicted
        self.dry_run = dry_run
        self.should_stop = should_stop
        self.record_limit = record_limit
        self._budget = plan.cutoff_budget
        self._lock = threading.Lock()

    def take(self, st: os.stat_result) -> bool:
        """Whether the block with this (fresh) stat goes (a worker thread)."""
        mtime = st.st_mtime_ns
        if mtime > self.plan.evictable_ns:
            return False
        bucket = mtime // self.plan.width_ns
        if bucket < self.plan.cutoff_bucket:
            return True
        if bucket > self.plan.cutoff_bucket:
            return False
        with self._lock:
            if self._budget <= 0:
                return False
            self._budget -= st.st_size
            return True

    def batch(self, paths: list[str]) -> EvictionResult:
        """Delete the planned blocks under some `<h[0:3]>` directories (a worker thread)."""
        out = EvictionResult()
        for path in paths:
            if out.stopped:
                break
            self._prefix(out, path)
        return out

    def targeted(self, leaves: list[tuple[str, list[str]]]) -> EvictionResult:
        """Delete the planned blocks in just these leaves of some `<h[0:3]>` directories (a worker thread);
        a prefix directory left empty by this is removed too."""
        out = EvictionResult()
        for prefix_path, names in leaves:
            if self.should_stop():
                out.stopped = True
                break
            prefix = prefix_path.rpartition("/")[2]
            removed = 0
            for name in names:
                if self._leaf(out, f"{prefix_path}/{name}", layout.leaf_stem(prefix, name)):
                    removed += 1
            if removed and self._rmdir(prefix_path):  # rmdir only succeeds on an empty directory
                out.removed_dirs += 1
        return out

    def _prefix(self, out: EvictionResult, path: str) -> None:
        prefix = path.rpartition("/")[2]
        leaves = removed = 0
        for leaf in _listing(path):
            if not (leaf.is_dir(follow_symlinks=False) and layout.is_leaf_dir(leaf.name)):
                leaves += 1  # unknown entry: keeps the prefix directory alive
                continue
            if self.should_stop():
                out.stopped = True
                return
            leaves += 1
            if self._leaf(out, leaf.path, layout.leaf_stem(prefix, leaf.name)):
                removed += 1
        if leaves and removed == leaves and self._rmdir(path):
            out.removed_dirs += 1

    def _leaf(self, out: EvictionResult, path: str, stem: str) -> bool:
        """Evict in one leaf directory; True if this emptied it and it was removed."""
        entries = _listing(path)
        deleted = 0
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                continue
            if layout.classify_leaf_file(stem, entry.name) is not layout.Kind.BLOCK:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                deleted += 1
                continue
            if not self.take(st):
                continue
            deleted += 1
            if self._unlink(entry.path):
                out.files += 1
                out.bytes += st.st_size
                if len(out.paths) < self.record_limit:
                    out.paths.append(entry.path)
                if not self.dry_run:
                    self.on_evicted(entry.path)
        if deleted and deleted == len(entries) and self._rmdir(path):
            out.removed_dirs += 1
            return True
        return False

    def _unlink(self, path: str) -> bool:
        if self.dry_run:
            return True
        try:
            os.unlink(path)  # noqa: PTH108 - once per evicted block: no Path object on the hot path
        except FileNotFoundError:
            return False
        return True

    def _rmdir(self, path: str) -> bool:
        return self.dry_run or _try_rmdir(path)


def evict(
    plan: EvictionPlan,
    prefix_dirs: Iterable[str],
    *,
    threads: int = 4,
    dry_run: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    record_limit: int = 1000,
    on_evicted: EvictedHook | None = None,
    leaves: Mapping[str, list[str]] | None = None,
) -> EvictionResult:
    """Walk the `<h[0:3]>` directories and delete what `plan` selects (GC thread or CLI main thread).

    `on_evicted` hears every deleted block file's path, never in a dry run (the KV events' BlockRemoved).
    With `leaves` ({prefix path: [leaf names]}, from the scan's index: the leaves that hold blocks old
    enough for the plan) only those leaves are walked, not every prefix directory.

    A leaf (and then a prefix) directory this walk empties is removed at once; a writer that loses
    the race re-creates it (the agent's `BlockFiles` does; vLLM's store of that one block fails).
    """
    result = EvictionResult()
    if plan.empty:
        return result
    walk = _Walk(
        plan,
        dry_run=dry_run,
        should_stop=should_stop,
        record_limit=record_limit,
        on_evicted=on_evicted or _no_hook,
    )
    run: Callable[[Any], EvictionResult]
    if leaves is not None:
        work: list[Any] = sorted(leaves.items())
        run = walk.targeted
    else:
        work, run = list(prefix_dirs), walk.batch
    batches = [work[i : i + PREFIXES_PER_TASK] for i in range(0, len(work), PREFIXES_PER_TASK)]
    if threads <= 1:
        parts: Iterable[EvictionResult] = map(run, batches)
        for part in parts:
            result.merge(part, record_limit)
        return result
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tieredkv-gc-evict") as pool:
        for part in pool.map(run, batches):
            result.merge(part, record_limit)
    return result


@dataclass(slots=True)
class SweepResult:
    """Temp files and empty directories removed (or that would be, in a dry run)."""

    temp_files: int = 0
    temp_bytes: int = 0
    dirs: int = 0
    paths: list[str] = field(default_factory=list)


def sweep(
    old_temps: Iterable[str], empty_dirs: Iterable[str], orphan_temp_ns: int, *, dry_run: bool = False
) -> SweepResult:
    """Delete orphaned temp files still older than `orphan_temp_ns`, then remove still-empty
    directories, deepest first (GC thread or CLI main thread)."""
    out = SweepResult()
    for path in old_temps:
        try:
            st = Path(path).lstat()
            if st.st_mtime_ns > orphan_temp_ns:
                continue
            if not dry_run:
                Path(path).unlink()
        except FileNotFoundError:
            continue
        out.temp_files += 1
        out.temp_bytes += st.st_size
        out.paths.append(path)
    for path in sorted(empty_dirs, key=lambda p: p.count("/"), reverse=True):
        if dry_run or _try_rmdir(path):
            out.dirs += 1
            out.paths.append(path)
    return out


def _listing(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except FileNotFoundError:
        return []


def _try_rmdir(path: str) -> bool:
    """rmdir, never recursive: a directory that gained an entry meanwhile stays."""
    with suppress(OSError):
        Path(path).rmdir()
        return True
    return False
