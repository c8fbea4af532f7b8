"""The node RAM pool: N block slots in one host buffer, an LRU index of which key is in which slot.

::

    entries  OrderedDict[(blocks_dir, key)] -> _Entry(slot, ready, readers)   oldest first
    free     [slot, ...]                                                      a stack; low slots first

    reserve(keys)  absent keys get a slot (free, else the oldest ready entry nobody reads is evicted);
                   the entry is not ready, so lookups and loads ignore it until
    commit(keys)   the copy into the slot finished (or abort: the slot goes back to the free stack)
    acquire(keys)  ready entries are pinned for reading (readers += 1) and become the newest;
    release(slots) readers -= 1

N = capacity_bytes // block_bytes, sized by the configured block size, else by the first block size of
at least `min_block_bytes` the pool sees (`accepts`): blocks of other sizes bypass the pool. The memory is
`capacity_bytes` whatever a client declares, and N is at most RAM_MAX_SLOTS, so the index is bounded too.
The memory is pinned when CUDA is available, plain (and touched only when used) otherwise. The pool
copies nothing itself: the layered tier moves the bytes with the copy engine.

Threads: every method may run on any thread (connection threads, tier I/O workers, copy-engine threads);
one lock guards the index, per batch of keys, and nothing waits for I/O under it.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tieredkv_agent.copy.plan import CopyError
from tieredkv_agent.copy.spaces import BlockSpace, unregister
from tieredkv_common.agent_limits import RAM_MAX_SLOTS, RAM_MIN_BLOCK_BYTES

log = logging.getLogger(__name__)

EntryKey = tuple[Path, bytes]


@dataclass(frozen=True, slots=True)
class RamStats:
    capacity_bytes: int
    """The configured budget (`ram_tier_bytes`)."""
    block_bytes: int
    """The pool's block size, 0 before the first job."""
    slots: int
    used_slots: int
    """Slots holding a block, ready or being written."""
    lookup_hits: int
    lookup_misses: int
    load_hits: int
    """Blocks of load jobs served from the pool."""
    load_misses: int
    """Blocks of load jobs the pool did not hold (served from the files, or missing)."""
    evictions: int
    cached_from_stores: int
    cached_from_loads: int
    copy_failures: int
    """Blocks whose copy into or out of the pool failed (loads then fall back to the files)."""
    no_room: int
    """Blocks not cached because every slot was being written or read."""
    bypassed: int
    """Blocks of a size other than the pool's, never cached."""

    @property
    def used_bytes(self) -> int:
        return self.used_slots * self.block_bytes


class _Entry:
    __slots__ = ("readers", "ready", "slot")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.ready = False
        self.readers = 0


class RamPool:
    """Blocks cached in node RAM, shared by every instance and namespace of the agent."""

    def __init__(
        self, capacity_bytes: int, *, block_bytes: int | None = None, pin: bool | None = None
    ) -> None:
        """An empty pool; its memory is allocated now if `block_bytes` is given, else on the first job."""
        if capacity_bytes < 1:
            raise ValueError("capacity_bytes must be positive")
        self.capacity_bytes = capacity_bytes
        self._pin = pin
        self._lock = threading.Lock()
        self._space: BlockSpace | None = None
        self._disabled = False
        self._entries: collections.OrderedDict[EntryKey, _Entry] = collections.OrderedDict()
        self._free: list[int] = []
        self._counts = collections.Counter[str]()
        if block_bytes is not None and not self.accepts(block_bytes):
            raise ValueError(f"a pool of {capacity_bytes} bytes cannot hold a block of {block_bytes} bytes")

    @property
    def space(self) -> BlockSpace:
        if self._space is None:
            raise CopyError("the RAM pool has no memory yet")
        return self._space

    @property
    def min_block_bytes(self) -> int:
        """Smaller blocks bypass the pool: its slot count, so its index, stays bounded in any case."""
        return max(RAM_MIN_BLOCK_BYTES, -(-self.capacity_bytes // RAM_MAX_SLOTS))

    def accepts(self, block_bytes: int, count: int = 1) -> bool:
        """True if blocks of this size are cached; the first call with a size of at least
        `min_block_bytes` sizes and allocates the pool."""
        with self._lock:
            if self._space is None and not self._disabled and block_bytes >= self.min_block_bytes:
                self._allocate(block_bytes)
            fits = self._space is not None and self._space.block_bytes == block_bytes
            if not fits:
                self._counts["bypassed"] += count
            return fits

    def _allocate(self, block_bytes: int) -> None:
        """Size the pool for `block_bytes` (under the lock); a failure disables the pool, loudly."""
        slots = self.capacity_bytes // block_bytes if block_bytes > 0 else 0
        if slots < 1:
            log.error(
                "RAM tier of %d bytes cannot hold one %d-byte block; off", self.capacity_bytes, block_bytes
            )
            self._disabled = True
            return
        try:
            self._space = BlockSpace.allocate(slots, block_bytes, pin=self._pin)
        except (CopyError, RuntimeError, MemoryError) as exc:
            log.error(
                "RAM tier of %d blocks of %d bytes could not be allocated (%s); off", slots, block_bytes, exc
            )
            self._disabled = True
            return
        self._free = list(range(slots - 1, -1, -1))
        log.info("RAM tier: %d slots of %d bytes (pinned: %s)", slots, block_bytes, self._space.pinned)

    def contains(self, space: Path, keys: Sequence[bytes]) -> list[bool]:
        """Which keys are ready in the pool (lookups; counted as lookup hits and misses)."""
        with self._lock:
            found = [(entry := self._entries.get((space, key))) is not None and entry.ready for key in keys]
            hits = sum(found)
            self._counts["lookup_hits"] += hits
            self._counts["lookup_misses"] += len(found) - hits
        return found

    def acquire(self, space: Path, keys: Sequence[bytes]) -> list[int | None]:
        """The slot of each ready key, pinned for reading until `release`; None where absent."""
        slots: list[int | None] = []
        with self._lock:
            for key in keys:
                entry = self._entries.get((space, key))
                if entry is None or not entry.ready:
                    slots.append(None)
                    continue
                entry.readers += 1
                self._entries.move_to_end((space, key))
                slots.append(entry.slot)
            hits = len(slots) - slots.count(None)
            self._counts["load_hits"] += hits
            self._counts["load_misses"] += len(slots) - hits
        return slots

    def release(self, space: Path, keys: Sequence[bytes]) -> None:
        """Unpin keys acquired for a load (its copy finished, either way)."""
        with self._lock:
            for key in keys:
                entry = self._entries.get((space, key))
                if entry is not None and entry.readers > 0:
                    entry.readers -= 1

    def reserve(self, space: Path, keys: Sequence[bytes]) -> list[int | None]:
        """A fresh slot per key not in the pool yet (evicting if needed); None for the others.

        Duplicate keys within one call get one slot (for their first occurrence).
        """
        slots: list[int | None] = []
        with self._lock:
            for key in keys:
                if (space, key) in self._entries:
                    slots.append(None)
                    continue
                slot = self._take_slot()
                if slot is None:
                    self._counts["no_room"] += 1
                else:
                    self._entries[(space, key)] = _Entry(slot)
                slots.append(slot)
        return slots

    def _take_slot(self) -> int | None:
        """A free slot, else the slot of the oldest evictable entry (under the lock)."""
        if self._free:
            return self._free.pop()
        for entry_key, entry in self._entries.items():
            if entry.ready and entry.readers == 0:
                del self._entries[entry_key]
                self._counts["evictions"] += 1
                return entry.slot
        return None

    def commit(self, space: Path, keys: Sequence[bytes], *, source: str) -> None:
        """The reserved keys' bytes are in their slots: make them visible (`source`: "store" or "load")."""
        with self._lock:
            for key in keys:
                entry = self._entries.get((space, key))
                if entry is not None:
                    entry.ready = True
            self._counts[f"cached_from_{source}s"] += len(keys)

    def abort(self, space: Path, keys: Sequence[bytes], *, failed: bool) -> None:
        """Drop reserved keys whose copy did not happen; their slots are free again."""
        with self._lock:
            for key in keys:
                entry = self._entries.get((space, key))
                if entry is not None and not entry.ready:
                    del self._entries[(space, key)]
                    self._free.append(entry.slot)
            if failed:
                self._counts["copy_failures"] += len(keys)

    def count_failures(self, blocks: int) -> None:
        with self._lock:
            self._counts["copy_failures"] += blocks

    def stats(self) -> RamStats:
        with self._lock:
            space, counts = self._space, dict(self._counts)
            used = len(self._entries)
        names = ("lookup_hits", "lookup_misses", "load_hits", "load_misses", "evictions")
        more = ("cached_from_stores", "cached_from_loads", "copy_failures", "no_room", "bypassed")
        return RamStats(
            self.capacity_bytes,
            space.block_bytes if space is not None else 0,
            space.num_blocks if space is not None else 0,
            used,
            *(counts.get(name, 0) for name in names + more),
        )

    def close(self) -> None:
        """Unpin the memory (main thread, once no copy uses the pool any more)."""
        with self._lock:
            space, self._space = self._space, None
            self._disabled = True
            self._entries.clear()
        if space is not None:
            unregister(space)
