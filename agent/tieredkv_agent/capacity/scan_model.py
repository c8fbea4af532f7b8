"""Value types of the GC scan: usage per namespace, the mtime histogram of evictable blocks, cutoffs.

Pure; each object is owned by one thread at a time (see `scan` and `scan_index`).
"""

from dataclasses import dataclass

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
