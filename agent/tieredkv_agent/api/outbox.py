"""One connection's replies: a bounded queue and the writer thread that sends it, so nobody else blocks.

Threads:

* `put` (a reply) and `defer` (work whose replies follow, e.g. a load's region write and its JobDone):
  any thread (the connection's reader, the tiers' I/O and copy threads). Neither ever waits for the client;
* `tkv-api-out-<n>`: the writer thread. It takes everything queued at once, runs deferred work and sends
  the frames in queue order, joined into one send per batch (many JobDones, one system call and one
  wake-up of the client's reader). The socket has a send timeout (`SO_SNDTIMEO`), so a client that stops
  reading fails the send after that long;
* `close`: the connection's reader thread when it ends, or the agent's main thread at shutdown.

Bounds: frames queued and unsent are at most `max_bytes`; a `put` beyond that calls `on_overflow` once and
drops the frame (the connection then closes: a client that does not drain its replies is cut off).
Deferred work is never dropped: it releases budgets and staging memory, so after the writer failed or
ended it runs on the caller's thread, its replies discarded.
"""

from __future__ import annotations

import collections
import logging
import socket
import struct
import threading
from collections.abc import Callable, Sequence

from tieredkv_agent.api.framing import FrameEncoder
from tieredkv_agent.api.protocol import ServerMessage

log = logging.getLogger(__name__)

Deferred = Callable[[bool], Sequence[ServerMessage]]
"""Work run in queue order: called with whether its replies can still be sent; returns them."""


def set_send_timeout(sock: socket.socket, timeout_s: float) -> None:
    """Make a blocking send fail (EAGAIN) after `timeout_s` without the receiver reading."""
    seconds = int(timeout_s)
    micros = int((timeout_s - seconds) * 1_000_000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, micros))


class Outbox:
    """The send queue of one connection and its writer thread."""

    def __init__(
        self,
        sock: socket.socket,
        encoder: FrameEncoder,
        *,
        name: str,
        max_bytes: int,
        on_overflow: Callable[[int], None],
        on_failure: Callable[[str], None],
    ) -> None:
        """`on_overflow(queued bytes)` and `on_failure(why)` close the connection (called at most once)."""
        self._sock = sock
        self._encoder = encoder
        self._encode_lock = threading.Lock()
        self._max = max_bytes
        self._on_overflow = on_overflow
        self._on_failure = on_failure
        self._cond = threading.Condition()
        self._items: collections.deque[bytes | Deferred] = collections.deque()
        self._queued = 0
        self._closing = False
        self._running = True
        self._sendable = True
        self._overflowed = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    @property
    def queued_bytes(self) -> int:
        return self._queued

    def put(self, message: ServerMessage) -> None:
        """Queue one reply (any thread; never blocks on the client)."""
        with self._encode_lock:
            frame = self._encoder.encode(message)
        with self._cond:
            if not self._sendable or not self._running:
                return
            if self._queued + len(frame) > self._max:
                overflow, self._overflowed = not self._overflowed, True
                queued = self._queued
            else:
                overflow = False
                self._items.append(frame)
                self._queued += len(frame)
                self._cond.notify()
                return
        if overflow:
            self._on_overflow(queued)

    def defer(self, work: Deferred) -> None:
        """Run `work` on the writer thread after what is queued; inline when the writer has ended."""
        with self._cond:
            if self._running:
                self._items.append(work)
                self._cond.notify()
                return
        work(False)

    def close(self) -> None:
        """No more replies will come: the writer sends what is queued, then ends (any thread)."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    def _next_batch(self) -> list[bytes | Deferred]:
        """Everything queued, in order; empty once closed and drained (the writer thread)."""
        with self._cond:
            while not self._items and not self._closing:
                self._cond.wait()
            if not self._items:
                self._running = False
                return []
            batch = list(self._items)
            self._items.clear()
            self._queued -= sum(len(item) for item in batch if isinstance(item, bytes))
            return batch

    def _run(self) -> None:
        """Send frames and run deferred work in order until closed and empty (the writer thread)."""
        try:
            while batch := self._next_batch():
                self._send(b"".join(self._frames(batch)))
        except Exception:
            log.exception("%s: writer failed", self.thread.name)
            self._fail("writer failed")
            with self._cond:
                self._running = False
                leftover = [item for item in self._items if not isinstance(item, bytes)]
                self._items.clear()
            for work in leftover:
                work(False)

    def _frames(self, batch: list[bytes | Deferred]) -> list[bytes]:
        """The batch's frames in order, deferred work run in its place (the writer thread)."""
        frames: list[bytes] = []
        for item in batch:
            if isinstance(item, bytes):
                frames.append(item)
                continue
            try:
                replies = item(self._sendable)
                if replies:
                    with self._encode_lock:
                        frames.extend([self._encoder.encode(reply) for reply in replies])
            except Exception:  # one failed piece of work must not stop the others (they free budgets)
                log.exception("%s: deferred work failed", self.thread.name)
        return frames

    def _send(self, frame: bytes) -> None:
        if not frame or not self._sendable:
            return
        try:
            self._sock.sendall(frame, socket.MSG_NOSIGNAL)
        except (BlockingIOError, TimeoutError):
            self._fail("the client did not read its replies within the send timeout")
        except OSError as exc:
            self._fail(f"send failed ({exc})")

    def _fail(self, why: str) -> None:
        with self._cond:
            first, self._sendable = self._sendable, False
            self._queued = 0
            self._items = collections.deque(item for item in self._items if not isinstance(item, bytes))
        if first:
            self._on_failure(why)
