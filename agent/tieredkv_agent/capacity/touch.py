"""Refresh a block's mtime when it is loaded, at most once per interval per file.

The capacity manager evicts by mtime, so a load hit must make the block "recently used". Touching on
every hit would turn each read into a metadata write on the shared volume; the throttle keeps one
`utime` per file per interval (60 s by default) in a bounded map.

Threads: `touch_on_hit` is called concurrently from the agent's I/O worker threads, right after a
successful load. The map is guarded by a lock; the `utime` itself runs outside it.
"""

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class TouchThrottle:
    """Per-file throttle for mtime refreshes; counters are plain ints for the metrics module to read."""

    def __init__(
        self,
        *,
        interval_s: float = 60.0,
        max_entries: int = 65536,
        clock: Callable[[], float] = time.monotonic,
        utime: Callable[[str], None] = os.utime,
    ) -> None:
        if interval_s < 0 or max_entries < 1:
            raise ValueError("interval_s must be >= 0 and max_entries >= 1")
        self.interval_s = interval_s
        self.max_entries = max_entries
        self._clock = clock
        self._utime = utime
        self._last: OrderedDict[str, float] = OrderedDict()
        """path -> when it was last touched, oldest first."""
        self._lock = threading.Lock()
        self.touched_total = 0
        self.throttled_total = 0
        self.errors_total = 0

    def touch_on_hit(self, path: str) -> bool:
        """Set `path`'s mtime to now unless this throttle did so within the interval (I/O workers).

        Returns True if the file was touched. A file that vanished (evicted meanwhile) or cannot be
        touched (read-only volume) is skipped; neither is an error for the load that triggered it.
        """
        now = self._clock()
        with self._lock:
            last = self._last.get(path)
            if last is not None and now - last < self.interval_s:
                self.throttled_total += 1
                return False
            self._last[path] = now
            self._last.move_to_end(path)
            self._forget_old(now)
        try:
            self._utime(path)
        except OSError as exc:
            with self._lock:
                self._last.pop(path, None)
                if not isinstance(exc, FileNotFoundError):
                    self.errors_total += 1
            return False
        with self._lock:
            self.touched_total += 1
        return True

    def _forget_old(self, now: float) -> None:
        """Drop entries past the interval and, beyond `max_entries`, the oldest (lock held)."""
        last = self._last
        while last and (len(last) > self.max_entries or now - next(iter(last.values())) >= self.interval_s):
            last.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._last)


DEFAULT_THROTTLE = TouchThrottle()
"""The process-wide throttle `touch_on_hit` uses."""


def touch_on_hit(path: str) -> bool:
    """`DEFAULT_THROTTLE.touch_on_hit(path)`: call after each successful block load (I/O workers)."""
    return DEFAULT_THROTTLE.touch_on_hit(path)
