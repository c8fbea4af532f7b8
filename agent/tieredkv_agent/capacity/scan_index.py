"""What the GC's scans saw in each leaf directory, kept between passes so unchanged leaves are skipped.

A leaf directory (`<h[0:3]>/<h[3:5]>_g<group>/`) whose ctime is what it was when its files were last read
has the same files: creating, renaming over or deleting one changes the directory's ctime, and nothing
can set a ctime back. So a pass lstat()s each leaf and re-reads only the changed ones; the sizes and mtimes
of the rest come from here. Kept compact, in numpy arrays: per file its mtime, size and leaf (24 bytes +
1), per (blocks directory, group) one fixed table of 2^20 leaves (ctime, where its files are, how many, when
last listed: 24 bytes each, 24 MiB).

What a ctime cannot see: a file's own mtime refreshed in place (`touch.TouchThrottle` on a load hit). Such a
block keeps its older mtime here until its leaf is read again, so it may be planned for eviction; the
eviction walk re-stats every block before deleting it, so it survives, and every leaf the walk visited is
re-read by the next pass (`invalidate`). The caller also starts over (`VolumeIndex()`) every so many
passes. A ctime within CTIME_MARGIN_NS of the scan is not trusted (timestamps are coarse, and a network
filesystem's clock differs): such a leaf is read again next pass, as are leaves holding temp files,
unknown entries or nothing (they are reported or swept each pass).

Threads: during `scan.scan_volume`, worker threads call `recorded_ctime` and `mark_seen` (reads, and
writes of their own leaves' slots) while the scanning thread calls `replace` with finished shards (other
leaves' slots; record arrays only the scanning thread touches). Everything else: the GC thread.
"""

import numpy as np
import numpy.typing as npt

from tieredkv_agent.capacity.scan_model import BUCKET_NS, MAX_BUCKETS, MtimeHistogram, Usage

GROUP_SHIFT = 20
SLOTS = 1 << GROUP_SHIFT
SLOT_MASK = SLOTS - 1
UNKNOWN = -1
"""A leaf's ctime that matches nothing: read it again next pass."""
CTIME_MARGIN_NS = 2_000_000_000

I64 = npt.NDArray[np.int64]


def leaf_key(prefix: str, leaf: str) -> int:
    """The key of leaf `<xx>_g<group>` in prefix `<hhh>` (both already checked by `layout`)."""
    return (int(leaf[4:]) << GROUP_SHIFT) | (int(prefix, 16) << 8) | int(leaf[0:2], 16)


def leaf_path(blocks_dir: str, key: int) -> tuple[str, str]:
    """(prefix directory path, leaf name) of a key under `blocks_dir`."""
    return f"{blocks_dir}/{(key >> 8) & 0xFFF:03x}", f"{key & 0xFF:02x}_g{key >> GROUP_SHIFT}"


class _Table:
    """The leaves of one group: 4096 prefixes x 256 names."""

    def __init__(self) -> None:
        self.ctime = np.full(SLOTS, UNKNOWN, np.int64)
        self.start = np.zeros(SLOTS, np.int64)
        self.count = np.zeros(SLOTS, np.int32)
        self.seen = np.zeros(SLOTS, np.int32)


class BlocksIndex:
    """One blocks directory (`<model>_<digest12>_r<rank>`)."""

    def __init__(self) -> None:
        self.tables: dict[int, _Table] = {}
        self.mtime: I64 = np.zeros(0, np.int64)
        self.size: I64 = np.zeros(0, np.int64)
        self.leaf: I64 = np.zeros(0, np.int64)
        self.alive = np.zeros(0, np.bool_)
        self.used = 0
        self.dead = 0

    def changed(self, keys: list[int], ctimes: list[int], pass_no: int) -> list[int]:
        """Positions of the leaves (listed together, by key and current ctime) to read again; the others
        are marked seen in this pass (worker threads, each with its own leaves)."""
        if not keys:
            return []
        key_array = np.array(keys, np.int64)
        now = np.array(ctimes, np.int64)
        same = np.zeros(len(keys), np.bool_)
        groups = key_array >> GROUP_SHIFT
        for group in np.unique(groups).tolist():
            table = self.tables.get(group)
            if table is None:
                continue
            pick = np.flatnonzero(groups == group)
            slots = key_array[pick] & SLOT_MASK
            recorded = table.ctime[slots]
            hit = (recorded == now[pick]) & (recorded != UNKNOWN)
            table.seen[slots[hit]] = pass_no
            same[pick[hit]] = True
        positions: list[int] = np.flatnonzero(~same).tolist()
        return positions

    def replace(self, keys: I64, ctimes: I64, counts: I64, *, mtimes: I64, sizes: I64, pass_no: int) -> None:
        """Record the files just read in these leaves, dropping what was recorded before (scanning thread)."""
        if not len(keys):
            return
        starts = self.used + np.cumsum(counts) - counts
        self._append(np.repeat(keys, counts), mtimes, sizes)
        groups = keys >> GROUP_SHIFT
        for group in np.unique(groups).tolist():
            table = self.tables.get(group)
            if table is None:
                table = self.tables[group] = _Table()
            pick = groups == group
            slots = keys[pick] & SLOT_MASK
            self._kill(table.start[slots], table.count[slots])
            table.start[slots] = starts[pick]
            table.count[slots] = counts[pick]
            table.ctime[slots] = ctimes[pick]
            table.seen[slots] = pass_no

    def invalidate(self, keys: I64) -> None:
        """Read these leaves again next pass (GC thread)."""
        groups = keys >> GROUP_SHIFT
        for group in np.unique(groups).tolist():
            table = self.tables.get(group)
            if table is not None:
                table.ctime[keys[groups == group] & SLOT_MASK] = UNKNOWN

    def finish(self, pass_no: int) -> None:
        """Forget leaves no longer listed this pass; compact when half the records are dead (GC thread)."""
        for table in self.tables.values():
            gone = np.flatnonzero((table.count > 0) & (table.seen != pass_no))
            if len(gone):
                self._kill(table.start[gone], table.count[gone])
                table.count[gone] = 0
                table.ctime[gone] = UNKNOWN
        if self.dead > max(self.used // 2, 1 << 16):
            self._compact()

    def usage(self) -> Usage:
        live = self.alive[: self.used]
        mtimes, sizes = self.mtime[: self.used][live], self.size[: self.used][live]
        if not len(mtimes):
            return Usage()
        return Usage(
            files=len(mtimes),
            bytes=int(sizes.sum()),
            oldest_mtime_ns=int(mtimes.min()),
            newest_mtime_ns=int(mtimes.max()),
        )

    def evictable(self, evictable_ns: int) -> MtimeHistogram:
        """Files and bytes per mtime bucket of the blocks at or before `evictable_ns`."""
        pick = self.alive[: self.used] & (self.mtime[: self.used] <= evictable_ns)
        return histogram(self.mtime[: self.used][pick], self.size[: self.used][pick])

    def leaves_at_or_before(self, limit_ns: int) -> I64:
        """Keys of the leaves holding a recorded block with an mtime at or before `limit_ns`."""
        pick = self.alive[: self.used] & (self.mtime[: self.used] <= limit_ns)
        keys: I64 = np.unique(self.leaf[: self.used][pick])
        return keys

    def nbytes(self) -> int:
        arrays = (self.mtime, self.size, self.leaf, self.alive)
        tables = sum(
            t.ctime.nbytes + t.start.nbytes + t.count.nbytes + t.seen.nbytes for t in self.tables.values()
        )
        return sum(a.nbytes for a in arrays) + tables

    def _append(self, leaves: I64, mtimes: I64, sizes: I64) -> None:
        need = self.used + len(mtimes)
        if need > len(self.mtime):
            capacity = max(need, len(self.mtime) + len(self.mtime) // 2, 1024)
            for name in ("mtime", "size", "leaf", "alive"):
                old = getattr(self, name)
                grown = np.zeros(capacity, old.dtype)
                grown[: self.used] = old[: self.used]
                setattr(self, name, grown)
        end = self.used + len(mtimes)
        self.mtime[self.used : end] = mtimes
        self.size[self.used : end] = sizes
        self.leaf[self.used : end] = leaves
        self.alive[self.used : end] = True
        self.used = end

    def _kill(self, starts: I64, counts: npt.NDArray[np.int32]) -> None:
        lengths = counts.astype(np.int64)
        total = int(lengths.sum())
        if total == 0:
            return
        offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        self.alive[offsets + np.arange(total)] = False
        self.dead += total

    def _compact(self) -> None:
        live = self.alive[: self.used]
        new_position = np.cumsum(live) - 1
        for table in self.tables.values():
            held = np.flatnonzero(table.count > 0)
            table.start[held] = new_position[table.start[held]]
        self.mtime = self.mtime[: self.used][live].copy()
        self.size = self.size[: self.used][live].copy()
        self.leaf = self.leaf[: self.used][live].copy()
        self.used = len(self.mtime)
        self.alive = np.ones(self.used, np.bool_)
        self.dead = 0


def histogram(mtimes: I64, sizes: I64) -> MtimeHistogram:
    """An MtimeHistogram of these blocks, its width doubled until the span fits MAX_BUCKETS."""
    out = MtimeHistogram()
    if not len(mtimes):
        return out
    width = BUCKET_NS
    low, high = int(mtimes.min()), int(mtimes.max())
    while high // width - low // width >= MAX_BUCKETS:
        width *= 2
    buckets = mtimes // width
    base = int(buckets.min())
    files = np.bincount(buckets - base)
    sizes_per = np.bincount(buckets - base, weights=sizes.astype(np.float64))
    out.width_ns = width
    for offset in np.flatnonzero(files).tolist():
        out.buckets[base + offset] = [int(files[offset]), int(sizes_per[offset])]
    return out


class VolumeIndex:
    """Every blocks directory of one volume, by directory name. Owned by the GC thread between passes."""

    def __init__(self) -> None:
        self.dirs: dict[str, BlocksIndex] = {}
        self.passes = 0

    def begin(self, blocks_dirs: list[str]) -> int:
        """Start a pass over these blocks directories (others are forgotten); returns the pass number."""
        self.passes += 1
        self.dirs = {name: self.dirs.get(name) or BlocksIndex() for name in blocks_dirs}
        return self.passes

    def nbytes(self) -> int:
        return sum(d.nbytes() for d in self.dirs.values())

    def candidate_leaves(self, root: str, limit_ns: int) -> dict[str, list[str]]:
        """{prefix directory path: [leaf names]} of the leaves holding blocks at or before `limit_ns`."""
        out: dict[str, list[str]] = {}
        for name, blocks in self.dirs.items():
            for key in blocks.leaves_at_or_before(limit_ns).tolist():
                prefix, leaf = leaf_path(f"{root}/{name}", key)
                out.setdefault(prefix, []).append(leaf)
        return out

    def invalidate(self, leaves: dict[str, list[str]]) -> None:
        """Read these leaves (as `candidate_leaves` gives them) again next pass."""
        keys: dict[str, list[int]] = {}
        for prefix_path, names in leaves.items():
            blocks_path, _, prefix = prefix_path.rpartition("/")
            dir_name = blocks_path.rpartition("/")[2]
            keys.setdefault(dir_name, []).extend(leaf_key(prefix, leaf) for leaf in names)
        for dir_name, found in keys.items():
            if dir_name in self.dirs:
                self.dirs[dir_name].invalidate(np.array(found, np.int64))
