"""Store admission (reuse filter): write a block to the shared volume only once it has been asked for.

Like vLLM's CPU-tier `store_threshold` / `max_tracker_size`, with one fix: a key counts at most once
per request id, not once per lookup. vLLM re-asks a request's keys every scheduler step while it
waits, so counting lookups would admit a block that only one request ever wanted.

Per key the tracker keeps the distinct request ids that asked for it, at most `threshold` of them;
when the last one arrives the ids are dropped and the key is simply "admitted". Counting is therefore
exact, and memory is bounded by `max_tracker_size` entries of at most `threshold` interned strings.
The tracker is an LRU over keys: a key not asked for while `max_tracker_size` other keys were starts
again from zero.

`threshold` 0 (the default) turns admission off: `observe` does nothing and every store is admitted.
A request should report all of its keys, not just the prefix up to its first miss: keys that are never
observed are never admitted.

Threads: `observe` runs on connection threads (lookups), `admit` on connection threads (store
submission); each call takes one lock for its whole batch.
"""

import collections
import sys
import threading
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

DEFAULT_MAX_TRACKER_SIZE = 64_000
"""vLLM's default for its CPU tier's reuse tracker."""


@dataclass(frozen=True, slots=True)
class AdmissionStats:
    threshold: int
    tracked_keys: int
    admitted: int
    """Store decisions that let the block through (while enabled)."""
    denied: int
    """Store decisions that skipped the block: each one a write the volume did not get."""
    evicted: int


class AdmissionFilter:
    """Counts, per key, the distinct requests that asked for it; admits stores at `threshold`."""

    def __init__(self, *, threshold: int = 0, max_tracker_size: int = DEFAULT_MAX_TRACKER_SIZE) -> None:
        """Configure the filter (startup thread)."""
        if threshold < 0 or max_tracker_size < 1:
            raise ValueError("threshold must be >= 0 and max_tracker_size >= 1")
        self.threshold = threshold
        self._max = max_tracker_size
        self._lock = threading.Lock()
        self._tracker: collections.OrderedDict[Hashable, tuple[str, ...] | None] = collections.OrderedDict()
        self._admitted = 0
        self._denied = 0
        self._evicted = 0

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    def observe(self, request_id: str, keys: Iterable[Hashable]) -> None:
        """Count each key once for `request_id`, however often this request asks (connection threads)."""
        if not self.enabled:
            return
        requester = sys.intern(request_id)
        threshold, tracker = self.threshold, self._tracker
        with self._lock:
            for key in keys:
                if key not in tracker:
                    tracker[key] = None if threshold == 1 else (requester,)
                    continue
                tracker.move_to_end(key)
                seen = tracker[key]
                if seen is None or requester in seen:
                    continue
                tracker[key] = None if len(seen) + 1 >= threshold else (*seen, requester)
            while len(tracker) > self._max:
                tracker.popitem(last=False)
                self._evicted += 1

    def admit(self, keys: Iterable[Hashable]) -> list[bool]:
        """Whether a store of each key may be written now, counted as admitted or denied (any thread)."""
        if not self.enabled:
            return [True for _ in keys]
        with self._lock:
            tracker = self._tracker
            verdicts = [key in tracker and tracker[key] is None for key in keys]
            admitted = sum(verdicts)
            self._admitted += admitted
            self._denied += len(verdicts) - admitted
        return verdicts

    def requests_seen(self, key: Hashable) -> int:
        """How many distinct requests asked for `key` so far (capped at the threshold; 0 if untracked)."""
        with self._lock:
            if key not in self._tracker:
                return 0
            seen = self._tracker[key]
            return self.threshold if seen is None else len(seen)

    def stats(self) -> AdmissionStats:
        with self._lock:
            return AdmissionStats(
                self.threshold, len(self._tracker), self._admitted, self._denied, self._evicted
            )
