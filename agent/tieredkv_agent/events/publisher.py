"""The KV-events publisher: one thread owns the ZMQ sockets, producers only enqueue.

::

    I/O threads, GC threads ──put_nowait──▶ bounded queue ──▶ tkv-events thread
      (never block: a full queue drops       (max_queue_events)   ├─ batches by topic, numbers them
       the change and counts it)                                  ├─ XPUB: [topic, seq, payload]
                                                                  ├─ replay ring (bounded: batches, bytes)
                                                                  └─ ROUTER: replays the ring from a seq

Memory is bounded by `max_queue_events` queued changes, the replay ring (`replay_max_batches` and
`replay_max_bytes` of payload) and ZMQ's high-water mark per subscriber (`hwm` messages of at most
`max_batch_events` events each). The PUB side is an XPUB socket so that the thread also sees
(un)subscriptions and can count them; to a subscriber it is an ordinary PUB.

Threads: the constructor binds both sockets (start-up thread; a bind error is raised there) and starts
the `tkv-events` thread, the only one that touches the sockets afterwards. `publish_*` may be called from
any thread; `close` from the thread that built the publisher.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

import msgspec
import zmq

from tieredkv_agent.events.filter import EventFilter
from tieredkv_agent.events.wire import (
    END_SEQ,
    MEDIUM_STORAGE,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    Event,
    encode_batch,
    seq_bytes,
)

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.02
"""How long the thread waits for a change before it looks at the sockets again (replay latency)."""


@dataclass(frozen=True, slots=True)
class PublisherLimits:
    """The bounds of one publisher's memory (see the module docstring)."""

    max_queue_events: int = 100_000
    max_batch_events: int = 512
    replay_max_batches: int = 10_000
    replay_max_bytes: int = 64 << 20
    hwm: int = 1000
    """Messages queued per subscriber (a slow one loses the newer ones and must replay)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One change of the tier, as producers hand it over (cheap to build: no encoding)."""

    topic: str
    removed: bool
    block_hash: bytes
    group_idx: int
    ownership: str | None
    cleared: bool = False

    @property
    def kind(self) -> str:
        """The vLLM event class this change becomes."""
        if self.cleared:
            return "AllBlocksCleared"
        return "BlockRemoved" if self.removed else "BlockStored"


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """Counters of one publisher, read by the metrics collector (any thread)."""

    published_events: int
    published_batches: int
    dropped_events: int
    subscriptions: int
    replays: int
    replay_batches: int
    replay_bytes: int
    queued_events: int
    filtered_events: int = 0


class KvEventPublisher:
    """Publishes block changes in vLLM's KV-events format on `endpoint`, replays on `replay_endpoint`."""

    def __init__(
        self,
        endpoint: str,
        replay_endpoint: str | None,
        limits: PublisherLimits | None = None,
        event_filter: EventFilter | None = None,
    ) -> None:
        self.limits = limits or PublisherLimits()
        self.filter = event_filter or EventFilter()
        self._queue: queue.Queue[Change | None] = queue.Queue(maxsize=self.limits.max_queue_events)
        self._ring: deque[tuple[int, bytes, bytes]] = deque()
        self._ring_bytes = 0
        self._ctx = zmq.Context()
        self._pub = self._ctx.socket(zmq.XPUB)
        self._replay: zmq.Socket[bytes] | None = None
        try:
            self._pub.setsockopt(zmq.SNDHWM, self.limits.hwm)
            self._pub.setsockopt(zmq.XPUB_VERBOSER, 1)
            self._pub.setsockopt(zmq.LINGER, 0)
            self._pub.bind(endpoint)
            self.endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
            self.replay_endpoint = None
            if replay_endpoint is not None:
                self._replay = self._ctx.socket(zmq.ROUTER)
                self._replay.setsockopt(zmq.SNDHWM, 2 * self.limits.replay_max_batches + 2)
                self._replay.setsockopt(zmq.LINGER, 0)
                self._replay.bind(replay_endpoint)
                self.replay_endpoint = self._replay.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError:
            self._close_sockets()
            raise
        self._next_seq = 0
        self._published_events = self._published_batches = self._dropped = 0
        self._subscriptions = self._replays = self._filtered = 0
        self._drop_lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tkv-events", daemon=True)
        self._thread.start()

    # -- producers (any thread) -------------------------------------------------------------------

    def publish(self, change: Change) -> bool:
        """Queue one change; False (and counted as dropped) when the queue is full or closed. Never blocks.
        A change the filter leaves out is counted as filtered and True is returned (nothing went wrong)."""
        if not self._admits(change):
            return True
        if not self._stopping:
            try:
                self._queue.put_nowait(change)
                return True
            except queue.Full:
                pass
        with self._drop_lock:
            self._dropped += 1
        return False

    def publish_waiting(self, change: Change, timeout_s: float = 5.0) -> bool:
        """Queue one change, waiting up to `timeout_s` for room (a walk's thread, never an I/O thread)."""
        if not self._admits(change):
            return True
        if not self._stopping:
            try:
                self._queue.put(change, timeout=timeout_s)
                return True
            except queue.Full:
                pass
        with self._drop_lock:
            self._dropped += 1
        return False

    def _admits(self, change: Change) -> bool:
        """The filter's verdict; a refused change is counted (producer threads)."""
        group = None if change.cleared else change.group_idx
        if self.filter.admits(change.topic, change.kind, group):
            return True
        with self._drop_lock:
            self._filtered += 1
        return False

    # -- control (start-up thread) ----------------------------------------------------------------

    def close(self, timeout_s: float = 2.0) -> None:
        """Publish what is queued (up to `timeout_s`), then stop the thread and close the sockets."""
        if self._stopping:
            return
        self._stopping = True
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            log.warning("events queue still full at shutdown: %d changes not published", self._queue.qsize())
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("the events thread did not stop within %.1f s", timeout_s)
            return
        self._close_sockets()

    def stats(self) -> PublisherStats:
        """A snapshot of the counters (metrics thread; plain reads of ints the events thread writes)."""
        with self._drop_lock:
            dropped, filtered = self._dropped, self._filtered
        return PublisherStats(
            self._published_events,
            self._published_batches,
            dropped,
            self._subscriptions,
            self._replays,
            len(self._ring),
            self._ring_bytes,
            self._queue.qsize(),
            filtered,
        )

    def _close_sockets(self) -> None:
        self._pub.close(linger=0)
        if self._replay is not None:
            self._replay.close(linger=0)
        self._ctx.term()

    # -- the tkv-events thread --------------------------------------------------------------------

    def _run(self) -> None:
        encoder = msgspec.msgpack.Encoder()
        poller = zmq.Poller()
        poller.register(self._pub, zmq.POLLIN)
        if self._replay is not None:
            poller.register(self._replay, zmq.POLLIN)
        while True:
            for sock, _ in poller.poll(0):
                try:
                    self._serve(sock)
                except zmq.ZMQError:
                    log.exception("events socket error")
            try:
                first = self._queue.get(timeout=POLL_INTERVAL_S)
            except queue.Empty:
                if self._stopping:  # closing found the queue full: it is drained now
                    return
                continue
            changes, stop = self._drain(first)
            try:
                self._send(encoder, changes)
            except Exception:
                log.exception("publishing %d KV events failed", len(changes))
            if stop:
                return

    def _drain(self, first: Change | None) -> tuple[list[Change], bool]:
        """The first change and whatever else is queued, up to a batch; True when the sentinel came."""
        if first is None:
            return [], True
        changes = [first]
        while len(changes) < self.limits.max_batch_events:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return changes, True
            changes.append(item)
        return changes, False

    def _send(self, encoder: msgspec.msgpack.Encoder, changes: list[Change]) -> None:
        """One message per topic, in the order the changes came (events thread)."""
        by_topic: dict[str, list[Event]] = {}
        for change in changes:
            by_topic.setdefault(change.topic, []).append(_event(change))
        now = time.time()
        for topic, events in by_topic.items():
            payload = encode_batch(encoder, now, _merge(events))
            topic_bytes = topic.encode("utf-8")
            seq = self._next_seq
            self._next_seq += 1
            self._pub.send_multipart((topic_bytes, seq_bytes(seq), payload))
            self._keep(seq, topic_bytes, payload)
            self._published_batches += 1
            self._published_events += len(events)

    def _keep(self, seq: int, topic: bytes, payload: bytes) -> None:
        """Append to the replay ring, dropping the oldest batches beyond its bounds (events thread)."""
        self._ring.append((seq, topic, payload))
        self._ring_bytes += len(payload)
        while self._ring and (
            len(self._ring) > self.limits.replay_max_batches
            or self._ring_bytes > self.limits.replay_max_bytes
        ):
            self._ring_bytes -= len(self._ring.popleft()[2])

    def _serve(self, sock: zmq.Socket[bytes]) -> None:
        """A (un)subscription on the XPUB socket or a replay request on the ROUTER (events thread)."""
        if sock is self._pub:
            frame = sock.recv(zmq.NOBLOCK)
            if frame[:1] == b"\x01":
                self._subscriptions += 1
            elif frame[:1] == b"\x00":
                self._subscriptions = max(0, self._subscriptions - 1)
            return
        frames = sock.recv_multipart(zmq.NOBLOCK)
        if len(frames) != 3 or len(frames[2]) != 8:
            log.warning("ignored a malformed replay request of %d frames", len(frames))
            return
        client, start = frames[0], int.from_bytes(frames[2], "big")
        self._replays += 1
        for seq, topic, payload in list(self._ring):
            if seq >= start:
                sock.send_multipart((client, b"", topic, seq_bytes(seq), payload))
        sock.send_multipart((client, b"", b"", END_SEQ, b""))


def _event(change: Change) -> Event:
    """The vLLM event of one change (events thread)."""
    if change.cleared:
        return AllBlocksCleared()
    if change.removed:
        return BlockRemoved([change.block_hash], MEDIUM_STORAGE, change.group_idx, change.ownership)
    return BlockStored(
        [change.block_hash], None, [], 0, None, MEDIUM_STORAGE, None, change.group_idx, change.ownership
    )


def _merge(events: list[Event]) -> list[Event]:
    """Consecutive removals of one group and owner become one BlockRemoved (as vLLM fans them out)."""
    out: list[Event] = []
    for event in events:
        last = out[-1] if out else None
        if (
            isinstance(event, BlockRemoved)
            and isinstance(last, BlockRemoved)
            and (last.group_idx, last.ownership) == (event.group_idx, event.ownership)
        ):
            last.block_hashes.extend(event.block_hashes)
        else:
            out.append(event)
    return out
