"""Who runs GC for a cache: exactly one leader across all agents that share the volume.

`LeaderElector` is the one interface; two implementations:

* `lease.LeaseElector`: a `coordination.k8s.io/v1` Lease (in-cluster, any number of nodes);
* `FileLockElector`: `flock` on `<root>/.tieredkv-gc.lock` (one node, or a dev machine).

Both poll from one background thread of their own ("tieredkv-gc-elector"), which is also the
thread that calls the leader-change callback, except for the final `False` that `stop()` reports
from the calling thread. `is_leader` may be read from any thread.
"""

import abc
import fcntl
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from tieredkv_agent.capacity.layout import LOCK_FILE_NAME

log = logging.getLogger(__name__)

LeaderCallback = Callable[[bool], None]


class LeaderElector(abc.ABC):
    """Elects one GC leader per cache. Start once, stop once."""

    identity: str

    @property
    @abc.abstractmethod
    def is_leader(self) -> bool:
        """True while this process may run GC (any thread)."""

    @abc.abstractmethod
    def start(self, on_change: LeaderCallback | None = None) -> None:
        """Begin campaigning in a background thread; `on_change(is_leader)` fires on each change."""

    @abc.abstractmethod
    def stop(self, *, release: bool = True) -> None:
        """Stop campaigning (any thread but the elector's). `release=True` hands leadership over at
        once; `release=False` just stops renewing, as if the process had died."""


class PollingElector(LeaderElector):
    """The shared thread loop: call `_attempt()` until stopped, sleeping the delay it returns.

    Subclasses implement `_attempt` (acquire or renew; returns seconds until the next attempt) and
    `_release`, and report outcomes through `_set_leader`. Leadership may carry a monotonic deadline
    after which `is_leader` turns False on its own, even if the thread is stuck in a slow call.
    """

    def __init__(self, identity: str, *, retry_period_s: float, mono: Callable[[], float] = time.monotonic):
        self.identity = identity
        self.retry_period_s = retry_period_s
        self._mono = mono
        self._lock = threading.Lock()
        self._leader = False
        self._leader_until = math.inf
        self._on_change: LeaderCallback | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        with self._lock:
            return self._leader and self._mono() < self._leader_until

    def start(self, on_change: LeaderCallback | None = None) -> None:
        if self._thread is not None:
            raise RuntimeError("elector already started")
        self._on_change = on_change
        self._thread = threading.Thread(target=self._run, name="tieredkv-gc-elector", daemon=True)
        self._thread.start()

    def stop(self, *, release: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._set_leader(False)  # before the release: never two leaders, even in this process's view
        if release:
            try:
                self._release()
            except Exception as exc:
                log.warning("%s: could not release leadership: %s", self.identity, exc)

    def _run(self) -> None:
        """The elector thread."""
        while not self._stop.is_set():
            try:
                delay = self._attempt()
            except Exception as exc:
                log.warning("%s: leader election attempt failed: %s", self.identity, exc)
                delay = self.retry_period_s
            if not self.is_leader:
                self._set_leader(False)  # a passed deadline becomes a reported change
            self._stop.wait(max(0.0, delay))

    def _set_leader(self, leader: bool, until: float = math.inf) -> None:
        with self._lock:
            was = self._leader and self._mono() < self._leader_until
            self._leader, self._leader_until = leader, until
        if leader != was:
            log.info("%s: %s GC leader", self.identity, "became" if leader else "is no longer")
            if self._on_change is not None:
                self._on_change(leader)

    @abc.abstractmethod
    def _attempt(self) -> float:
        """Acquire or renew leadership once (elector thread); seconds until the next attempt."""

    @abc.abstractmethod
    def _release(self) -> None:
        """Give leadership up so that another candidate takes over at once (stopping thread)."""


class FileLockElector(PollingElector):
    """Leader = holder of an exclusive `flock` on `<root>/.tieredkv-gc.lock`.

    The kernel drops the lock when the holder dies, so `stop(release=False)` releases it as well.
    Works between processes (and between instances in one process) on one host; on NFS it depends on
    the server's lock support, so multi-node clusters should use `LeaseElector`.
    """

    def __init__(self, root: str | os.PathLike[str], identity: str, *, retry_period_s: float = 5.0) -> None:
        super().__init__(identity, retry_period_s=retry_period_s)
        self.path = Path(root, LOCK_FILE_NAME)
        self._fd: int | None = None

    def stop(self, *, release: bool = True) -> None:
        """Stop campaigning; the lock is always dropped (a dead holder's lock is dropped by the kernel)."""
        super().stop(release=True)

    def _attempt(self) -> float:
        if self._fd is not None:
            if self._still_locking_the_file():
                return self.retry_period_s
            self._close()
            self._set_leader(False)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self._set_leader(False)
            return self.retry_period_s
        self._fd = fd
        if not self._still_locking_the_file():  # unlinked between our open and flock
            self._close()
            return 0.0
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.identity}\n".encode(), 0)
        self._set_leader(True)
        return self.retry_period_s

    def _still_locking_the_file(self) -> bool:
        """True if our descriptor is still the file at `path` (someone may have deleted it)."""
        assert self._fd is not None
        try:
            ours, there = os.fstat(self._fd), self.path.stat()
        except OSError:
            return False
        return (ours.st_dev, ours.st_ino) == (there.st_dev, there.st_ino)

    def _release(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._fd is not None:
            with suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
