"""Load hits' mtime refreshes, off the I/O threads: one background thread runs them in arrival order.

A load hit refreshes its file's mtime (`capacity.touch.touch_on_hit`, throttled per file) so that GC's
least-recently-used order stays true across nodes. Done inline, that `utime` is one more file operation on
the load's I/O thread: a metadata write, and a round trip on a network volume, which vLLM's own fs tier
does not pay. Here the I/O thread only queues the path; the refresh follows within moments. The queue is
bounded: past `max_pending` paths a refresh is dropped and counted (it orders eviction, it moves no data).

Threads: `put` from the file tier's I/O workers; `tkv-touch` runs the refreshes; `close` from the agent's
main thread at shutdown (what is queued is still refreshed, for at most `timeout_s`).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class TouchQueue:
    """Runs `touch(path)` for queued paths on its own thread."""

    def __init__(self, touch: Callable[[str], object], *, max_pending: int = 65536) -> None:
        self._touch = touch
        self._max = max_pending
        self._cond = threading.Condition()
        self._paths: collections.deque[str] = collections.deque()
        self._closed = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="tkv-touch", daemon=True)
        self._thread.start()

    def put(self, path: str) -> None:
        """Queue a refresh of `path` (I/O worker threads; never waits)."""
        with self._cond:
            if self._closed or len(self._paths) >= self._max:
                self.dropped += 1
                return
            self._paths.append(path)
            if len(self._paths) == 1:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._paths and not self._closed:
                    self._cond.wait()
                if not self._paths:
                    return
                batch = list(self._paths)
                self._paths.clear()
            for path in batch:
                try:
                    self._touch(path)
                except Exception:
                    log.exception("refreshing the mtime of %s failed", path)

    def close(self, timeout_s: float) -> None:
        """Refresh what is queued (for at most `timeout_s`) and stop the thread (main thread)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout_s)
