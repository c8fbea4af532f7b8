"""A read-only, parallel scan of a cache volume: usage per namespace, evictable bytes by age, leftovers.

Threads: `scan_volume` is called from the GC thread (or the CLI's main thread for `inspect` and
`gc --dry-run`). It lists the root and the blocks directories itself, then hands each `<h[0:3]>`
directory to a small thread pool (`os.scandir` and `stat` release the GIL) and merges the shards.

The scan keeps no per-file records for blocks, so memory stays flat however many files there are:
evictable blocks go into an `MtimeHistogram` (bytes and files per mtime bucket) from which
`evict.plan_eviction` derives an mtime cutoff; the eviction walk then re-reads the tree.
"""

import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tieredkv_agent.capacity import layout

BUCKET_NS = 1_000_000_000
"""Initial width of a histogram bucket: one second of mtime."""

MAX_BUCKETS = 1 << 16
"""A histogram with more buckets than this doubles its bucket width (merging neighbours)."""


@dataclass(slots=True)
class Usage:
    """Files and bytes (apparent sizes) of one namespace, blocks and temp files apart."""

    files: int = 0
    bytes: int = 0
    temp_files: int = 0
    temp_bytes: int = 0
    oldest_mtime_ns: int | None = None
    newest_mtime_ns: int | None = None

    def add_block(self, size: int, mtime_ns: int) -> None:
        self.files += 1
        self.bytes += size
        self._see(mtime_ns)

    def merge(self, other: "Usage") -> None:
        self.files += other.files
        self.bytes += other.bytes
        self.temp_files += other.temp_files
        self.temp_bytes += other.temp_bytes
        for mtime_ns in (other.oldest_mtime_ns, other.newest_mtime_ns):
            if mtime_ns is not None:
                self._see(mtime_ns)

    def _see(self, mtime_ns: int) -> None:
        if self.oldest_mtime_ns is None or mtime_ns < self.oldest_mtime_ns:
            self.oldest_mtime_ns = mtime_ns
        if self.newest_mtime_ns is None or mtime_ns > self.newest_mtime_ns:
            self.newest_mtime_ns = mtime_ns


class MtimeHistogram:
    """Files and bytes of evictable blocks per mtime bucket (`mtime_ns // width_ns`).

    Owned by one thread at a time: each scan shard fills its own, the scanning thread merges them.
    """

    __slots__ = ("buckets", "max_buckets", "width_ns")

    def __init__(self, width_ns: int = BUCKET_NS, max_buckets: int = MAX_BUCKETS) -> None:
        self.width_ns = width_ns
        self.max_buckets = max_buckets
        self.buckets: dict[int, list[int]] = {}
        """bucket -> [files, bytes]"""

    def add(self, mtime_ns: int, size: int) -> None:
        cell = self.buckets.setdefault(mtime_ns // self.width_ns, [0, 0])
        cell[0] += 1
        cell[1] += size

    def merge(self, other: "MtimeHistogram") -> None:
        """Add `other` (whose width must divide ours or be a multiple of it) into this histogram."""
        while other.width_ns > self.width_ns:
            self._coarsen(2)
        factor = self.width_ns // other.width_ns
        for key, (files, size) in other.buckets.items():
            cell = self.buckets.setdefault(key // factor, [0, 0])
            cell[0] += files
            cell[1] += size
        while len(self.buckets) > self.max_buckets:
            self._coarsen(2)

    def _coarsen(self, factor: int) -> None:
        merged: dict[int, list[int]] = {}
        for key, (files, size) in self.buckets.items():
            cell = merged.setdefault(key // factor, [0, 0])
            cell[0] += files
            cell[1] += size
        self.buckets = merged
        self.width_ns *= factor

    @property
    def files(self) -> int:
        return sum(cell[0] for cell in self.buckets.values())

    @property
    def bytes(self) -> int:
        return sum(cell[1] for cell in self.buckets.values())


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Absolute mtimes (ns) the scan compares against; files at or before a cutoff qualify."""

    evictable_ns: int
    """Blocks (and empty directories) last modified at or before this are past the grace period."""
    orphan_temp_ns: int
    """Temp files last modified at or before this are orphans."""

    @classmethod
    def at(cls, now_s: float, grace_s: float, temp_timeout_s: float) -> "Cutoffs":
        now_ns = int(now_s * 1e9)
        return cls(now_ns - int(grace_s * 1e9), now_ns - int(temp_timeout_s * 1e9))


@dataclass(slots=True)
class ScanResult:
    """What one scan saw. `old_temps` and `empty_dirs` are candidates, re-checked before deletion."""

    root: str
    cutoffs: Cutoffs
    usage: dict[str, Usage] = field(default_factory=dict)
    """By namespace (`<model>_<digest12>`): blocks and temps of all its `_r<rank>` directories."""
    config_dirs: set[str] = field(default_factory=set)
    blocks_dirs: dict[str, list[str]] = field(default_factory=dict)
    prefix_dirs: list[str] = field(default_factory=list)
    evictable: MtimeHistogram = field(default_factory=MtimeHistogram)
    old_temps: list[str] = field(default_factory=list)
    empty_dirs: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    unknown_count: int = 0
    errors: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    max_reported: int = 100

    @property
    def files(self) -> int:
        return sum(u.files for u in self.usage.values())

    @property
    def bytes(self) -> int:
        return sum(u.bytes for u in self.usage.values())

    def note_unknown(self, path: str) -> None:
        self.unknown_count += 1
        if len(self.unknown) < self.max_reported:
            self.unknown.append(path)

    def note_error(self, exc: OSError) -> None:
        if len(self.errors) < self.max_reported:
            self.errors.append(f"{exc.filename}: {exc.strerror}")


class _Shard:
    """What one scan worker saw in a batch of `<h[0:3]>` directories of one namespace.

    Built and filled by one worker thread, then merged by the scanning thread. The per-file path is
    written for speed (one scandir per leaf directory and one stat per file are the floor).
    """

    def __init__(self, base: str, cutoffs: Cutoffs) -> None:
        self.base = base
        self.cutoffs = cutoffs
        self.usage = Usage()
        self.evictable = MtimeHistogram()
        self.old_temps: list[str] = []
        self.empty_dirs: list[str] = []
        self.unknown: list[str] = []
        self.errors: list[OSError] = []

    def scan_prefix(self, path: str) -> None:
        """One `<h[0:3]>` directory and its leaf directories."""
        prefix = path.rpartition("/")[2]
        remaining = 0
        try:
            with os.scandir(path) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False) and layout.is_leaf_dir(entry.name):
                        if self.scan_leaf(entry.path, layout.leaf_stem(prefix, entry.name)):
                            continue
                    else:
                        self.unknown.append(entry.path)
                    remaining += 1
        except FileNotFoundError:
            return
        except OSError as exc:
            self.errors.append(exc)
            return
        if remaining == 0 and _is_old(path, self.cutoffs):
            self.empty_dirs.append(path)

    def scan_leaf(self, path: str, stem: str) -> bool:
        """Account one leaf directory; True if it is gone, or empty and old enough to remove."""
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except FileNotFoundError:
            return True  # removed meanwhile: nothing to account, nothing to remove
        evictable_ns = self.cutoffs.evictable_ns
        width, buckets = self.evictable.width_ns, self.evictable.buckets
        seen = 0
        for entry in entries:
            kind = layout.Kind.UNKNOWN
            if entry.is_file(follow_symlinks=False):
                kind = layout.classify_leaf_file(stem, entry.name)
            if kind is layout.Kind.UNKNOWN:
                self.unknown.append(entry.path)
                seen += 1
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            seen += 1
            mtime, size = st.st_mtime_ns, st.st_size
            if kind is layout.Kind.TEMP:
                self._temp(entry.path, mtime, size)
                continue
            self.usage.add_block(size, mtime)
            if mtime <= evictable_ns:
                cell = buckets.setdefault(mtime // width, [0, 0])
                cell[0] += 1
                cell[1] += size
        if seen == 0 and _is_old(path, self.cutoffs):
            self.empty_dirs.append(path)
            return True
        return False

    def _temp(self, path: str, mtime_ns: int, size: int) -> None:
        self.usage.temp_files += 1
        self.usage.temp_bytes += size
        if mtime_ns <= self.cutoffs.orphan_temp_ns:
            self.old_temps.append(path)


PREFIXES_PER_TASK = 32
"""`<h[0:3]>` directories per worker task (a namespace has up to 4096 of them)."""


def scan_volume(
    root: str | os.PathLike[str], cutoffs: Cutoffs, *, threads: int = 4, max_reported: int = 100
) -> ScanResult:
    """Scan the whole volume (GC thread or CLI main thread); `threads` workers walk the hash dirs."""
    started = time.monotonic()
    result = ScanResult(os.fspath(root), cutoffs, max_reported=max_reported)
    tasks = _batches(_list_top(result))

    def run(task: tuple[str, list[str]]) -> _Shard:
        shard = _Shard(task[0], cutoffs)
        for path in task[1]:
            shard.scan_prefix(path)
        return shard

    if threads <= 1:
        _merge_all(result, map(run, tasks))
    else:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tieredkv-gc-scan") as pool:
            _merge_all(result, pool.map(run, tasks))
    result.duration_s = time.monotonic() - started
    return result


def _batches(shards: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Group (namespace, prefix path) items into tasks of one namespace each."""
    tasks: list[tuple[str, list[str]]] = []
    for base, path in shards:
        if not tasks or tasks[-1][0] != base or len(tasks[-1][1]) >= PREFIXES_PER_TASK:
            tasks.append((base, []))
        tasks[-1][1].append(path)
    return tasks


def _merge_all(result: ScanResult, shards: Iterable[_Shard]) -> None:
    for shard in shards:
        result.usage[shard.base].merge(shard.usage)
        result.evictable.merge(shard.evictable)
        result.old_temps.extend(shard.old_temps)
        result.empty_dirs.extend(shard.empty_dirs)
        for path in shard.unknown:
            result.note_unknown(path)
        for exc in shard.errors:
            result.note_error(exc)


def _list_top(result: ScanResult) -> list[tuple[str, str]]:
    """Classify the root's entries; return the (namespace, `<h[0:3]>` path) work items."""
    shards: list[tuple[str, str]] = []
    for entry in _entries(result, result.root):
        base = layout.namespace_base(entry.name)
        if entry.is_dir(follow_symlinks=False) and base is not None:
            result.usage.setdefault(base, Usage())
            if layout.is_blocks_dir(entry.name):
                result.blocks_dirs.setdefault(base, []).append(entry.name)
                shards.extend((base, path) for path in _list_blocks_dir(result, entry.path))
            else:
                result.config_dirs.add(base)
                _list_config_dir(result, entry.path)
        elif entry.name not in layout.ROOT_ENTRIES:
            _file_outside_hash_dirs(result, entry)
    result.prefix_dirs = [path for _, path in shards]
    return shards


def _list_blocks_dir(result: ScanResult, path: str) -> list[str]:
    prefixes = []
    for entry in _entries(result, path):
        if entry.is_dir(follow_symlinks=False) and layout.is_prefix_dir(entry.name):
            prefixes.append(entry.path)
        else:
            _file_outside_hash_dirs(result, entry)
    return prefixes


def _list_config_dir(result: ScanResult, path: str) -> None:
    for entry in _entries(result, path):
        if entry.name != layout.CONFIG_FILE_NAME or not entry.is_file(follow_symlinks=False):
            _file_outside_hash_dirs(result, entry)


def _file_outside_hash_dirs(result: ScanResult, entry: os.DirEntry[str]) -> None:
    """A probe temp file is swept when old; anything else here is unknown."""
    if not (entry.is_file(follow_symlinks=False) and layout.is_probe_temp(entry.name)):
        result.note_unknown(entry.path)
        return
    try:
        if entry.stat(follow_symlinks=False).st_mtime_ns <= result.cutoffs.orphan_temp_ns:
            result.old_temps.append(entry.path)
    except FileNotFoundError:
        pass


def _entries(result: ScanResult, path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except FileNotFoundError:
        return []
    except OSError as exc:
        result.note_error(exc)
        return []


def _is_old(path: str, cutoffs: Cutoffs) -> bool:
    """True if the directory was last modified before the grace period (a fresh one may be in use)."""
    try:
        return Path(path).stat().st_mtime_ns <= cutoffs.evictable_ns
    except OSError:
        return False
