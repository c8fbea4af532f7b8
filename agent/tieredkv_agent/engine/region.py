"""A client's region: read and written by the kernel only, so the agent never faults on client memory.

A vLLM instance hands the agent its CPU region (`/dev/shm/vllm_offload_<engine>.mmap`) as a descriptor.
Touching a mapping of it from user space would let the client kill the agent: a file truncated after the
Hello turns every access past its new end into SIGBUS. System calls are different: when the kernel copies
to or from a user address whose page is gone (get_user_pages, copy_to/from_user) the call fails with
EFAULT or comes back short; no signal is sent. So there are two ways to move a job's bytes:

    in place  (`ClientRegion.slot_views`, for tiers whose `kernel_only_views` is true: the file tier)
              the region is mapped once; a job's views are slices of that mapping, and the tier hands them
              only to system calls: O_DIRECT write(file, region view) on store, preadv(file, [region view])
              on load. No copy and no staging buffer: what vLLM's own fs tier does. A shrunk region fails
              the keys (EFAULT, short I/O) and the job names the region (`ClientRegion.shrunk`).
    staged    (every other tier, e.g. the RAM pool, whose copies run in user space)
        store ClientRegion.read_slots(slots, staging)   preadv(region fd) -> the job's staging buffer
        load  the tiers fill the staging buffer; ClientRegion.write_slots(slots, staging, which)
              pwritev(staging) -> region fd, only for the keys that were loaded
              A short read or write (the client shrank or lost its file) raises `RegionError`.

Staging buffers are anonymous page-aligned mappings owned by the agent (O_DIRECT can use them in place);
their total is bounded by the staging budgets of the socket server (`api/jobs.py`), which also bound the
bytes of in-place jobs in flight.

Threads: `map`, at the Hello, on the connection's reader thread; `read_slots` and `slot_views` on the
reader or writer thread that stages a chunk, `write_slots` on the writer thread (the outbox),
`retain`/`release` on either; pread/pwrite on one descriptor are safe concurrently, and views of the
mapping are only read by the kernel on the tier's I/O threads.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from collections.abc import Iterator, Sequence

from tieredkv_agent.store.blockio import DIRECT_ALIGNMENT


class RegionError(Exception):
    """The client's region could not be read or written as a whole (its file shrank, or I/O failed)."""


def _runs(slots: Sequence[int], indices: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """(first job index, first slot, count) of runs where job indices and slots both ascend by one."""
    start = 0
    for position in range(1, len(indices) + 1):
        if (
            position == len(indices)
            or indices[position] != indices[position - 1] + 1
            or slots[indices[position]] != slots[indices[position - 1]] + 1
        ):
            yield indices[start], slots[indices[start]], position - start
            start = position


class ClientRegion:
    """One connection's region by descriptor; the descriptor is closed after the last job releases it."""

    def __init__(self, fd: int, size: int, block_bytes: int) -> None:
        """Take ownership of `fd` (the connection's reader thread, at the Hello)."""
        self.fd = fd
        self.size = size
        self.block_bytes = block_bytes
        self._lock = threading.Lock()
        self._users = 1  # the connection itself
        self._closed = False
        self._map: mmap.mmap | None = None
        self._base: memoryview | None = None

    def map(self) -> bool:
        """Map the region for in-place jobs; False (staged jobs only) when it cannot or should not be.

        Only whole pages: a block size that is not a multiple of DIRECT_ALIGNMENT would put views off
        O_DIRECT's alignment, and the file tier would then copy them through a bounce buffer in user space.
        """
        if self.block_bytes % DIRECT_ALIGNMENT or self.size < self.block_bytes:
            return False
        try:
            self._map = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError):
            return False
        self._base = memoryview(self._map)
        return True

    def slot_views(self, slots: Sequence[int]) -> SlotViews | None:
        """The slots as views of the mapping, for system calls only; None when the region is not mapped."""
        base, size = self._base, self.block_bytes
        if base is None:
            return None
        return SlotViews([base[slot * size : (slot + 1) * size] for slot in slots])

    def shrunk(self) -> bool:
        """Whether the region file is now shorter than at the Hello (or cannot be inspected)."""
        try:
            return os.fstat(self.fd).st_size < self.size
        except OSError:
            return True

    def retain(self) -> None:
        """A job starts using the region (reader thread)."""
        with self._lock:
            if self._closed:
                raise RegionError("the region was released")
            self._users += 1

    def release(self) -> None:
        """A job, or the connection, stops using the region; the last one closes the descriptor."""
        with self._lock:
            self._users -= 1
            last = self._users == 0 and not self._closed
            if last:
                self._closed = True
        if last:
            if self._base is not None:
                self._base.release()
            if self._map is not None:
                with contextlib.suppress(BufferError):  # a view escaped: the collector unmaps it
                    self._map.close()
            os.close(self.fd)

    def read_slots(self, slots: Sequence[int], staging: memoryview) -> None:
        """Copy slots[i] of the region into block i of `staging`; RegionError on a short read."""
        size = self.block_bytes
        for first, slot, count in _runs(slots, range(len(slots))):
            target = staging[first * size : (first + count) * size]
            try:
                got = os.preadv(self.fd, [target], slot * size)
            except OSError as exc:
                raise RegionError(f"reading slots {slot}..{slot + count - 1} failed: {exc}") from exc
            if got != target.nbytes:
                raise RegionError(
                    f"short read of slots {slot}..{slot + count - 1}: {got} of {target.nbytes} bytes "
                    "(the region file shrank)"
                )

    def write_slots(self, slots: Sequence[int], staging: memoryview, which: Sequence[int]) -> None:
        """Copy block i of `staging` into slots[i] of the region for every i in `which` (ascending)."""
        size = self.block_bytes
        if not which:
            return
        try:
            current = os.fstat(self.fd).st_size
        except OSError as exc:
            raise RegionError(f"the region cannot be inspected: {exc}") from exc
        if current < self.size:
            raise RegionError(f"the region file shrank from {self.size} to {current} bytes")
        for first, slot, count in _runs(slots, which):
            source = staging[first * size : (first + count) * size]
            try:
                put = os.pwritev(self.fd, [source], slot * size)
            except OSError as exc:
                raise RegionError(f"writing slots {slot}..{slot + count - 1} failed: {exc}") from exc
            if put != source.nbytes:
                raise RegionError(
                    f"short write of slots {slot}..{slot + count - 1}: {put} of {source.nbytes}"
                )


PAGE = mmap.PAGESIZE


class SlotViews:
    """One chunk's slots as views of a mapped region (in place: nothing is staged or written back)."""

    in_place = True

    def __init__(self, views: list[memoryview]) -> None:
        self.views = views

    def close(self) -> None:
        """Drop the views once no tier uses them (whichever thread ends the chunk)."""
        for view in self.views:
            view.release()


def size_class(nbytes: int) -> int:
    """The mapping size a staging buffer of `nbytes` gets: a power of two of pages (so buffers recur)."""
    pages = max(1, -(-nbytes // PAGE))
    return PAGE << (pages - 1).bit_length()


class StagingCache:
    """Staging mappings kept for reuse, at most `max_idle_bytes` of them idle (any thread).

    A fresh anonymous mapping costs a page fault per page on first touch and an munmap at the end: about
    0.6 GB/s for 32 MiB jobs on the development machine, against several GB/s for a mapping used before.
    """

    def __init__(self, max_idle_bytes: int) -> None:
        self.max_idle_bytes = max_idle_bytes
        self._lock = threading.Lock()
        self._free: dict[int, list[mmap.mmap]] = {}
        self._idle = 0

    def take(self, nbytes: int) -> mmap.mmap:
        size = size_class(nbytes)
        with self._lock:
            free = self._free.get(size)
            if free:
                self._idle -= size
                return free.pop()
        return mmap.mmap(-1, size)

    def give(self, mapped: mmap.mmap) -> None:
        size = len(mapped)
        with self._lock:
            if self._idle + size <= self.max_idle_bytes:
                self._free.setdefault(size, []).append(mapped)
                self._idle += size
                return
        with contextlib.suppress(BufferError):  # a view escaped (a copy holds it): the collector frees it
            mapped.close()

    @property
    def idle_bytes(self) -> int:
        return self._idle


class Staging:
    """An agent-owned, page-aligned buffer of `count` blocks and its per-block views (one job's bytes)."""

    in_place = False

    def __init__(self, count: int, block_bytes: int, cache: StagingCache | None = None) -> None:
        self.nbytes = count * block_bytes
        self._cache = cache
        self._map = cache.take(self.nbytes) if cache is not None else mmap.mmap(-1, max(self.nbytes, 1))
        self.base = memoryview(self._map)[: self.nbytes]
        self.views = [self.base[index * block_bytes : (index + 1) * block_bytes] for index in range(count)]

    def close(self) -> None:
        """Free (or hand back) the buffer once no tier uses the views (whichever thread ends the job)."""
        for view in self.views:
            view.release()
        self.base.release()
        if self._cache is not None:
            self._cache.give(self._map)
            return
        with contextlib.suppress(BufferError):  # a view escaped (a copy holds it): the collector frees it
            self._map.close()
