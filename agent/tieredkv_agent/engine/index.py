"""The lookup index: HIT / MISS / RETRY for batches of block keys, with no syscall on the hot path.

Per namespace (keyed by its blocks directory) the index keeps 64-bit fingerprints of keys::

    positive  set[int]          on the volume: our own stores and loads, the background scan, stat answers;
                                kept until a load fails or `discard` (GC) removes them
    negative  dict[int, float]  absent, with an expiry `negative_ttl_s` ahead so that blocks written by
                                other nodes become visible
    pending   set[int]          queued for a stat thread

    lookup(keys): positive -> HIT | unexpired negative -> MISS | otherwise -> RETRY, and queue one stat
    stat threads  (tkv-index-stat<i>): exists(path) -> positive, or negative until now + ttl
    scan thread   (tkv-index-scan):    walks a namespace's directories once, on its first use

The fingerprint is the low 60 bits of Python's `hash()` of the key bytes (SipHash, cached on the bytes
object). A collision (about 4e-7 for a million keys) can only turn a MISS into a HIT; the load then
fails, the key is marked missing and the block is recomputed, as for any block deleted behind our back.
Memory: about 63 MiB per million positive keys (bench/agent_io.py measures it).

The first answer after a stat that found nothing is MISS even if the TTL ran out meanwhile, so a TTL
shorter than the client's retry interval cannot turn into RETRY forever.

Threads: `lookup` and `known_present` run on connection threads; `add`, `mark_missing` and `discard`
on I/O workers and the GC; all of them take one lock per batch, never per key, and never do I/O.
"""

import enum
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tieredkv_agent.engine.blockscan import block_keys
from tieredkv_agent.store.blockio import DEFAULT_OPS, FileOps
from tieredkv_agent.store.naming import Namespace

log = logging.getLogger(__name__)

Clock = Callable[[], float]

_FINGERPRINT_MASK = (1 << 60) - 1


def _fingerprint(key: bytes) -> int:
    """The low 60 bits of the key's hash: CPython keeps such an int in 32 bytes, a 64-bit one in 48."""
    return hash(key) & _FINGERPRINT_MASK


_SCAN_BATCH = 4096
_STAT_BATCH = 256
_MIN_SWEEP = 1024


class LookupResult(enum.Enum):
    """A tier's answer for one key, as vLLM's tiers give it (HIT_PENDING is the primary's alone)."""

    MISS = "miss"
    HIT = "hit"
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class IndexStats:
    namespaces: int
    positive_keys: int
    negative_keys: int
    pending_stats: int
    stats_done: int
    stat_overflows: int
    """RETRY answers that could not queue a stat because `max_pending` stats were already queued."""
    evicted_positive: int
    scanned_files: int
    hits: int
    misses: int
    retries: int


class _Space:
    """The fingerprints of one namespace (guarded by the index's lock)."""

    __slots__ = ("fresh", "namespace", "negative", "pending", "positive", "sweep_at")

    def __init__(self, namespace: Namespace, sweep_at: int) -> None:
        self.namespace = namespace
        self.positive: set[int] = set()
        self.negative: dict[int, float] = {}
        self.fresh: set[int] = set()
        """Negatives set by a stat and not answered yet."""
        self.pending: set[int] = set()
        self.sweep_at = sweep_at
        """Sweep the negatives when there are this many."""


class LookupIndex:
    """Existence answers for block keys; one instance per agent, shared by all namespaces."""

    def __init__(
        self,
        *,
        ops: FileOps = DEFAULT_OPS,
        negative_ttl_s: float = 1.0,
        max_keys: int = 2_000_000,
        max_negative_keys: int = 262_144,
        max_pending: int = 65_536,
        stat_threads: int = 1,
        scan_on_first_use: bool = True,
        clock: Clock = time.monotonic,
        background: bool = True,
    ) -> None:
        """Build the index and, if `background`, start its stat and scan threads (startup thread).

        Without `background` nothing runs by itself: tests call `run_pending` and `scan`.
        """
        if negative_ttl_s <= 0 or min(max_keys, max_negative_keys, max_pending, stat_threads) < 1:
            raise ValueError("negative_ttl_s, key limits and stat_threads must be positive")
        self._ops = ops
        self._ttl = negative_ttl_s
        self._max_keys = max_keys
        self._max_negative = max_negative_keys
        self._max_pending = max_pending
        self._scan_on_first_use = scan_on_first_use and background
        self._clock = clock
        self._lock = threading.Lock()
        self._stat_ready = threading.Condition(self._lock)
        self._scan_ready = threading.Condition(self._lock)
        self._spaces: dict[Path, _Space] = {}
        self._stat_queue: deque[tuple[_Space, int, bytes]] = deque()
        self._scan_queue: deque[Namespace] = deque()
        self._closing = False
        self._positive_count = 0
        self._counts = dict.fromkeys(
            ("stats", "overflows", "evicted", "scanned", "hits", "misses", "retries"), 0
        )
        self._threads: list[threading.Thread] = []
        if background:
            names = [f"tkv-index-stat{i}" for i in range(stat_threads)]
            self._threads = [threading.Thread(target=self._stat_loop, name=n, daemon=True) for n in names]
            self._threads.append(threading.Thread(target=self._scan_loop, name="tkv-index-scan", daemon=True))
            for thread in self._threads:
                thread.start()

    # -- answers (connection threads) ---------------------------------------------------------------

    def lookup(self, namespace: Namespace, keys: Iterable[bytes]) -> list[LookupResult]:
        """HIT / MISS / RETRY per key, in order; unknown keys get one stat queued (never blocks)."""
        hit, miss, retry = LookupResult.HIT, LookupResult.MISS, LookupResult.RETRY
        now, mask = self._clock(), _FINGERPRINT_MASK
        answers: list[LookupResult] = []
        answer = answers.append
        queued = 0
        with self._lock:
            space = self._space_locked(namespace)
            positive, negative = space.positive, space.negative
            for key in keys:
                fingerprint = hash(key) & mask  # _fingerprint(key), inlined: this loop is the hot path
                if fingerprint in positive:
                    answer(hit)
                elif fingerprint in negative and self._negative_holds_locked(space, fingerprint, now):
                    answer(miss)
                else:
                    answer(retry)
                    queued += self._queue_stat_locked(space, fingerprint, key)
            self._count_answers_locked(answers)
            if queued:
                self._stat_ready.notify(queued)
        return answers

    def known_present(self, namespace: Namespace, keys: Iterable[bytes]) -> list[bool]:
        """Whether each key is in the positive set (no stat, no counting)."""
        with self._lock:
            positive = self._space_locked(namespace).positive
            return [_fingerprint(key) in positive for key in keys]

    def _negative_holds_locked(self, space: _Space, fingerprint: int, now: float) -> bool:
        """True while a negative answer is valid; drops an expired one (the key becomes unknown)."""
        fresh = fingerprint in space.fresh
        if fresh:
            space.fresh.discard(fingerprint)
        if fresh or now < space.negative[fingerprint]:
            return True
        del space.negative[fingerprint]
        return False

    def _queue_stat_locked(self, space: _Space, fingerprint: int, key: bytes) -> int:
        """1 if a stat was queued for the key, 0 if one is pending already or the queue is full."""
        if fingerprint in space.pending:
            return 0
        if len(self._stat_queue) >= self._max_pending:
            self._counts["overflows"] += 1
            return 0
        space.pending.add(fingerprint)
        self._stat_queue.append((space, fingerprint, key))
        return 1

    def _count_answers_locked(self, answers: Sequence[LookupResult]) -> None:
        hits = answers.count(LookupResult.HIT)
        retries = answers.count(LookupResult.RETRY)
        self._counts["hits"] += hits
        self._counts["retries"] += retries
        self._counts["misses"] += len(answers) - hits - retries

    # -- facts learned elsewhere (I/O workers, GC) ----------------------------------------------------

    def add(self, namespace: Namespace, keys: Iterable[bytes]) -> None:
        """The blocks are on the volume (we just wrote or read them)."""
        with self._lock:
            space = self._space_locked(namespace)
            for key in keys:
                self._add_positive_locked(space, _fingerprint(key))

    def mark_missing(self, namespace: Namespace, keys: Iterable[bytes]) -> None:
        """The blocks are not usable (a load failed): MISS until the negative TTL runs out."""
        expiry = self._clock() + self._ttl
        with self._lock:
            space = self._space_locked(namespace)
            for key in keys:
                self._set_negative_locked(space, _fingerprint(key), expiry)

    def discard(self, namespace: Namespace, keys: Iterable[bytes]) -> None:
        """Forget the keys (GC deleted their files): the next lookup stats them again."""
        with self._lock:
            space = self._space_locked(namespace)
            for key in keys:
                fingerprint = _fingerprint(key)
                if fingerprint in space.positive:
                    space.positive.discard(fingerprint)
                    self._positive_count -= 1
                space.negative.pop(fingerprint, None)

    def _space_locked(self, namespace: Namespace) -> _Space:
        space = self._spaces.get(namespace.blocks_dir)
        if space is None:
            space = self._spaces[namespace.blocks_dir] = _Space(
                namespace, min(_MIN_SWEEP, self._max_negative)
            )
            if self._scan_on_first_use:
                self._scan_queue.append(namespace)
                self._scan_ready.notify()
        return space

    def _add_positive_locked(self, space: _Space, fingerprint: int) -> None:
        space.negative.pop(fingerprint, None)
        if fingerprint in space.positive:
            return
        if self._positive_count >= self._max_keys:
            self._evict_one_locked(space)
        space.positive.add(fingerprint)
        self._positive_count += 1

    def _evict_one_locked(self, space: _Space) -> None:
        """Drop an arbitrary positive, from `space` if it has any (bounds memory; costs a later stat)."""
        victim = space if space.positive else max(self._spaces.values(), key=lambda s: len(s.positive))
        victim.positive.pop()
        self._positive_count -= 1
        self._counts["evicted"] += 1

    def _set_negative_locked(self, space: _Space, fingerprint: int, expiry: float) -> None:
        if fingerprint in space.positive:
            space.positive.discard(fingerprint)
            self._positive_count -= 1
        space.negative[fingerprint] = expiry
        if len(space.negative) >= space.sweep_at:
            self._sweep_locked(space)

    def _sweep_locked(self, space: _Space) -> None:
        """Drop expired negatives, then the oldest beyond half the cap (amortised O(1) per insert)."""
        now = self._clock()
        negative = {fp: expiry for fp, expiry in space.negative.items() if expiry > now}
        keep = self._max_negative // 2
        if len(negative) > keep:
            negative = dict(itertools.islice(negative.items(), len(negative) - keep, None))
        space.negative = negative
        space.fresh.intersection_update(negative)
        space.sweep_at = min(max(_MIN_SWEEP, 2 * len(negative)), self._max_negative)

    # -- stat threads ---------------------------------------------------------------------------------

    def run_pending(self, limit: int = _STAT_BATCH) -> int:
        """Stat up to `limit` queued keys and record the answers; returns how many (stat threads, tests)."""
        with self._lock:
            batch = [self._stat_queue.popleft() for _ in range(min(limit, len(self._stat_queue)))]
        found = [self._exists(space.namespace.block_path(key)) for space, _, key in batch]
        expiry = self._clock() + self._ttl
        with self._lock:
            for (space, fingerprint, _), exists in zip(batch, found, strict=True):
                space.pending.discard(fingerprint)
                if exists:
                    self._add_positive_locked(space, fingerprint)
                elif exists is False and fingerprint not in space.positive:
                    self._set_negative_locked(space, fingerprint, expiry)
                    space.fresh.add(fingerprint)
            self._counts["stats"] += len(batch)
        return len(batch)

    def _exists(self, path: str) -> bool | None:
        """True / False, or None if the stat itself failed (the key stays unknown)."""
        try:
            return self._ops.exists(path)
        except OSError as exc:
            log.warning("lookup stat of %s failed: %s", path, exc)
            return None

    def _stat_loop(self) -> None:
        while True:
            with self._lock:
                self._stat_ready.wait_for(lambda: self._closing or bool(self._stat_queue))
                if self._closing:
                    return
            self.run_pending()

    # -- scan thread ----------------------------------------------------------------------------------

    def scan(self, namespace: Namespace) -> int:
        """Add every block file of `namespace` to the positive set; returns how many (scan thread, tests)."""
        total = 0
        keys = block_keys(namespace.blocks_dir)
        while batch := list(itertools.islice(keys, _SCAN_BATCH)):
            with self._lock:
                if self._closing:
                    break
                space = self._space_locked(namespace)
                for key in batch:
                    self._add_positive_locked(space, _fingerprint(key))
                self._counts["scanned"] += len(batch)
            total += len(batch)
        return total

    def _scan_loop(self) -> None:
        while True:
            with self._lock:
                self._scan_ready.wait_for(lambda: self._closing or bool(self._scan_queue))
                if self._closing:
                    return
                namespace = self._scan_queue.popleft()
            started = time.monotonic()
            found = self.scan(namespace)
            log.info(
                "scanned %s: %d blocks in %.1f s", namespace.blocks_dir, found, time.monotonic() - started
            )

    # -- control --------------------------------------------------------------------------------------

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop the background threads (agent's main thread); answers keep working from memory."""
        with self._lock:
            self._closing = True
            self._stat_ready.notify_all()
            self._scan_ready.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def stats(self) -> IndexStats:
        with self._lock:
            spaces = self._spaces.values()
            counts = self._counts
            return IndexStats(
                namespaces=len(self._spaces),
                positive_keys=self._positive_count,
                negative_keys=sum(len(space.negative) for space in spaces),
                pending_stats=len(self._stat_queue),
                stats_done=counts["stats"],
                stat_overflows=counts["overflows"],
                evicted_positive=counts["evicted"],
                scanned_files=counts["scanned"],
                hits=counts["hits"],
                misses=counts["misses"],
                retries=counts["retries"],
            )
