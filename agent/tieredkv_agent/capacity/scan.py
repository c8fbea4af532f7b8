"""A read-only, parallel, incremental scan of a cache volume: usage per namespace, evictable bytes by age,
leftovers.

Threads: `scan_volume` is called from the GC thread (or the CLI's main thread for `inspect` and
`gc --dry-run`). It lists the root and the blocks directories itself, then hands batches of `<h[0:3]>`
directories to a small thread pool (`os.scandir` and `lstat` release the GIL) and merges the shards.

Incremental: given the `VolumeIndex` of the previous pass, a leaf directory whose ctime has not changed
is not read again (one lstat instead of a listing and a stat per file); see `scan_index` for what that
can and cannot see. Without one (inspect, dry runs) every leaf is read. Per file the index keeps only
numbers in numpy arrays, so memory grows by ~25 bytes a file, not by Python objects; the usage and the
`MtimeHistogram` of evictable blocks (from which `evict.plan_eviction` derives an mtime cutoff) are
computed from it at the end of the pass.
"""

import os
import time
from array import array
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tieredkv_agent.capacity import layout
from tieredkv_agent.capacity.scan_index import CTIME_MARGIN_NS, GROUP_SHIFT, UNKNOWN, BlocksIndex, VolumeIndex
from tieredkv_agent.capacity.scan_model import BUCKET_NS, MAX_BUCKETS, Cutoffs, MtimeHistogram, Usage

__all__ = ["BUCKET_NS", "MAX_BUCKETS", "Cutoffs", "MtimeHistogram", "ScanResult", "Usage", "scan_volume"]


@dataclass(slots=True)
class ScanResult:
    """What one scan saw. `old_temps` and `empty_dirs` are candidates, re-checked before deletion."""

    root: str
    cutoffs: Cutoffs
    index: VolumeIndex = field(default_factory=VolumeIndex)
    """What the scan recorded per leaf (the next pass's starting point; `evict` asks it for candidates)."""
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
    leaves_read: int = 0
    """Leaf directories listed (changed, or not recorded before)."""
    leaves_skipped: int = 0
    """Leaf directories whose unchanged ctime let the scan reuse what it recorded."""
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
    """What one scan worker saw in a batch of `<h[0:3]>` directories of one blocks directory.

    Built and filled by one worker thread, then merged by the scanning thread. The per-file path is
    written for speed: per leaf one lstat, and only for a changed leaf one scandir and one stat per file.
    The files read go into flat arrays (`keys`/`ctimes`/`counts` per leaf, `mtimes`/`sizes` per file).
    """

    def __init__(
        self, base: str, blocks: BlocksIndex, cutoffs: Cutoffs, pass_no: int, trust_before_ns: int
    ) -> None:
        self.base = base
        self.blocks = blocks
        self.cutoffs = cutoffs
        self.pass_no = pass_no
        self.trust_before_ns = trust_before_ns
        self.usage = Usage()
        self.keys, self.ctimes, self.counts = array("q"), array("q"), array("q")
        self.mtimes, self.sizes = array("q"), array("q")
        self.read = self.skipped = 0
        self.old_temps: list[str] = []
        self.empty_dirs: list[str] = []
        self.unknown: list[str] = []
        self.errors: list[OSError] = []

    def scan_prefix(self, path: str) -> None:
        """One `<h[0:3]>` directory: lstat its leaf directories, read the changed ones."""
        prefix = path.rpartition("/")[2]
        high = int(prefix, 16) << 8
        remaining = 0
        leaves: list[os.DirEntry[str]] = []
        keys: list[int] = []
        ctimes: list[int] = []
        try:
            with os.scandir(path) as it:
                for entry in it:
                    name = entry.name
                    if entry.is_dir(follow_symlinks=False) and layout.is_leaf_dir(name):
                        try:
                            ctimes.append(entry.stat(follow_symlinks=False).st_ctime_ns)
                        except FileNotFoundError:
                            continue
                        keys.append((int(name[4:]) << GROUP_SHIFT) | high | int(name[0:2], 16))
                        leaves.append(entry)
                    else:
                        self.unknown.append(entry.path)
                        remaining += 1
        except FileNotFoundError:
            return
        except OSError as exc:
            self.errors.append(exc)
            return
        changed = self.blocks.changed(keys, ctimes, self.pass_no)
        self.skipped += len(leaves) - len(changed)
        self.read += len(changed)
        remaining += len(leaves) - len(changed)
        for i in changed:
            entry = leaves[i]
            if not self.scan_leaf(entry.path, prefix + entry.name[0:2], keys[i], ctimes[i]):
                remaining += 1
        if remaining == 0 and _is_old(path, self.cutoffs):
            self.empty_dirs.append(path)

    def scan_leaf(self, path: str, stem: str, key: int, ctime: int) -> bool:
        """Read one leaf directory; True if it is gone, or empty and old enough to remove."""
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except FileNotFoundError:
            return True  # removed meanwhile: nothing to account, nothing to remove
        mtimes, sizes = self.mtimes, self.sizes
        before = len(mtimes)
        seen = 0
        clean = True
        for entry in entries:
            kind = layout.Kind.UNKNOWN
            if entry.is_file(follow_symlinks=False):
                kind = layout.classify_leaf_file(stem, entry.name)
            if kind is layout.Kind.UNKNOWN:
                self.unknown.append(entry.path)
                seen += 1
                clean = False
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                clean = False
                continue
            seen += 1
            if kind is layout.Kind.TEMP:
                self._temp(entry.path, st.st_mtime_ns, st.st_size)
                clean = False
                continue
            mtimes.append(st.st_mtime_ns)
            sizes.append(st.st_size)
        trusted = clean and seen > 0 and ctime < self.trust_before_ns
        self.keys.append(key)
        self.ctimes.append(ctime if trusted else UNKNOWN)
        self.counts.append(len(mtimes) - before)
        if seen == 0 and _is_old(path, self.cutoffs):
            self.empty_dirs.append(path)
            return True
        return False

    def _temp(self, path: str, mtime_ns: int, size: int) -> None:
        self.usage.temp_files += 1
        self.usage.temp_bytes += size
        if mtime_ns <= self.cutoffs.orphan_temp_ns:
            self.old_temps.append(path)

    def record(self) -> None:
        """Put what this shard read into the index (the scanning thread)."""
        keys, ctimes, counts, mtimes, sizes = (
            np.frombuffer(a, np.int64) for a in (self.keys, self.ctimes, self.counts, self.mtimes, self.sizes)
        )
        self.blocks.replace(keys, ctimes, counts, mtimes=mtimes, sizes=sizes, pass_no=self.pass_no)


PREFIXES_PER_TASK = 32
"""`<h[0:3]>` directories per worker task (a namespace has up to 4096 of them)."""


def scan_volume(
    root: str | os.PathLike[str],
    cutoffs: Cutoffs,
    *,
    threads: int = 4,
    max_reported: int = 100,
    index: VolumeIndex | None = None,
    ctime_margin_ns: int = CTIME_MARGIN_NS,
) -> ScanResult:
    """Scan the whole volume (GC thread or CLI main thread); `threads` workers walk the hash dirs.

    With the `index` of an earlier pass over the same root, unchanged leaves are not read again; the
    index is updated in place (and returned as `result.index`). A leaf whose ctime is within
    `ctime_margin_ns` of now is read again next time.
    """
    started = time.monotonic()
    result = ScanResult(os.fspath(root), cutoffs, index or VolumeIndex(), max_reported=max_reported)
    items = _list_top(result)
    pass_no = result.index.begin([name for names in result.blocks_dirs.values() for name in names])
    tasks = _batches(items)
    trust_before_ns = time.time_ns() - ctime_margin_ns

    def run(task: tuple[str, str, list[str]]) -> _Shard:
        shard = _Shard(task[0], result.index.dirs[task[1]], cutoffs, pass_no, trust_before_ns)
        for path in task[2]:
            shard.scan_prefix(path)
        return shard

    if threads <= 1:
        _merge_all(result, map(run, tasks))
    else:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tieredkv-gc-scan") as pool:
            _merge_all(result, pool.map(run, tasks))
    for base, names in result.blocks_dirs.items():
        for name in names:
            blocks = result.index.dirs[name]
            blocks.finish(pass_no)
            result.usage[base].merge(blocks.usage())
            result.evictable.merge(blocks.evictable(cutoffs.evictable_ns))
    result.duration_s = time.monotonic() - started
    return result


def _batches(items: list[tuple[str, str, str]]) -> list[tuple[str, str, list[str]]]:
    """Group (namespace, blocks dir, prefix path) items into tasks of one blocks directory each."""
    tasks: list[tuple[str, str, list[str]]] = []
    for base, blocks, path in items:
        if not tasks or tasks[-1][1] != blocks or len(tasks[-1][2]) >= PREFIXES_PER_TASK:
            tasks.append((base, blocks, []))
        tasks[-1][2].append(path)
    return tasks


def _merge_all(result: ScanResult, shards: Iterable[_Shard]) -> None:
    for shard in shards:
        shard.record()
        result.usage[shard.base].merge(shard.usage)
        result.leaves_read += shard.read
        result.leaves_skipped += shard.skipped
        result.old_temps.extend(shard.old_temps)
        result.empty_dirs.extend(shard.empty_dirs)
        for path in shard.unknown:
            result.note_unknown(path)
        for exc in shard.errors:
            result.note_error(exc)


def _list_top(result: ScanResult) -> list[tuple[str, str, str]]:
    """Classify the root's entries; return the (namespace, blocks dir, `<h[0:3]>` path) work items."""
    shards: list[tuple[str, str, str]] = []
    for entry in _entries(result, result.root):
        base = layout.namespace_base(entry.name)
        if entry.is_dir(follow_symlinks=False) and base is not None:
            result.usage.setdefault(base, Usage())
            if layout.is_blocks_dir(entry.name):
                result.blocks_dirs.setdefault(base, []).append(entry.name)
                shards.extend((base, entry.name, path) for path in _list_blocks_dir(result, entry.path))
            else:
                result.config_dirs.add(base)
                _list_config_dir(result, entry.path)
        elif entry.name not in layout.ROOT_ENTRIES:
            _file_outside_hash_dirs(result, entry)
    result.prefix_dirs = [path for _, _, path in shards]
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
