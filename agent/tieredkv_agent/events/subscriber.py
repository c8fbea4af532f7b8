"""A router's subscriber to one cache: every agent's PUB socket, their replay rings, one view of the volume.

This is the procedure docs/events.md prescribes for routers, as code (the watch tool, the demo and the
k8s tests use it; the vLLM test tier does the same with vLLM's own classes):

* one SUB socket per agent (the endpoints of the cache's events Service), so each agent's sequence
  numbers can be followed;
* **sync**: replay every agent's ring from 0 and apply all of it, merged in timestamp order (each batch
  carries its send time), to a fresh view. A GC leader's ring starts with its snapshot (an
  AllBlocksCleared per model, then every block on the volume), so older stores and deletions of other
  agents, replayed before it, are superseded by it, and what came after it applies on top;
* **live**: apply each message in order; a message already applied by the sync is skipped (a lower
  sequence with an older timestamp); a gap, a restarted agent (a lower sequence, newer), or a new agent
  (the Service's endpoints changed) makes it sync again.

Runs on the caller's thread only (ZMQ sockets are not thread-safe).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import zmq

from tieredkv_agent.events.wire import END_SEQ, AllBlocksCleared, BlockStored, EventBatch, decode_batch

Block = tuple[str | None, bytes | int, int | None]
"""(ownership = namespace directory, block hash, KV-cache group)."""
SUBSCRIPTION_SETTLE_S = 0.3
"""How long a new SUB socket's subscription takes to reach its agent before the ring is replayed."""


class View:
    """The blocks the events announce, kept per topic (an AllBlocksCleared empties its topic: every
    block of one model in the cache)."""

    def __init__(self) -> None:
        self.by_topic: dict[bytes, set[Block]] = {}
        self.messages = 0
        self.clears = 0

    @property
    def blocks(self) -> set[Block]:
        return set().union(*self.by_topic.values())

    def apply(self, topic: bytes, batch: EventBatch) -> None:
        self.messages += 1
        blocks = self.by_topic.setdefault(topic, set())
        for event in batch.events:
            if isinstance(event, AllBlocksCleared):
                blocks.clear()
                self.clears += 1
                continue
            keys = {(event.ownership, h, event.group_idx) for h in event.block_hashes}
            if isinstance(event, BlockStored):
                blocks |= keys
            else:
                blocks -= keys


@dataclass
class _Agent:
    pub: str
    replay: str
    sub: zmq.Socket[bytes]
    expected: int = 0
    last_ts: float = float("-inf")
    kept: list[tuple[float, int, bytes, EventBatch]] = field(default_factory=list)


class Subscriber:
    """Follows a cache's agents (by name: a pod, an address) and keeps `view` equal to their events."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], topic_prefix: str = "") -> None:
        self.ctx = ctx
        self.topic_prefix = topic_prefix
        self.view = View()
        self.agents: dict[str, _Agent] = {}
        self.syncs = 0
        self.skipped = 0

    def set_agents(self, endpoints: dict[str, tuple[str, str]]) -> None:
        """Follow exactly these agents, name -> (PUB endpoint, replay endpoint); sync if one is new."""
        for name in self.agents.keys() - endpoints.keys():
            self.agents.pop(name).sub.close(linger=0)
        new = {name: ends for name, ends in endpoints.items() if name not in self.agents}
        for name, (pub, replay) in new.items():
            sub = self.ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.RCVHWM, 0)
            sub.setsockopt_string(zmq.SUBSCRIBE, self.topic_prefix)
            sub.connect(pub)
            self.agents[name] = _Agent(pub, replay, sub)
        if new:
            time.sleep(SUBSCRIPTION_SETTLE_S)
            self.sync()

    def sync(self) -> None:
        """Rebuild the view from every agent's ring, merged by timestamp."""
        self.syncs += 1
        for agent in self.agents.values():
            agent.kept = list(self._replay(agent))
            if agent.kept:
                agent.expected = agent.kept[-1][1] + 1
                agent.last_ts = max(ts for ts, _, _, _ in agent.kept)
            else:
                agent.expected, agent.last_ts = 0, float("-inf")
        view = View()
        streams = [agent.kept for agent in self.agents.values()]
        for _, _, topic, batch in heapq.merge(*streams, key=lambda item: item[0]):
            view.apply(topic, batch)
        self.view = view
        for agent in self.agents.values():
            agent.kept = []

    def poll(self, timeout_ms: int = 100) -> int:
        """Take what arrived (waiting up to `timeout_ms` for the first); the number of messages taken."""
        poller = zmq.Poller()
        for agent in self.agents.values():
            poller.register(agent.sub, zmq.POLLIN)
        taken = 0
        for sock, _ in poller.poll(timeout_ms):
            agent = next(a for a in self.agents.values() if a.sub is sock)
            while sock.poll(0):
                topic, seq, payload = sock.recv_multipart()
                self._take(agent, topic, int.from_bytes(seq, "big"), decode_batch(payload))
                taken += 1
        return taken

    def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.poll(100)

    def close(self) -> None:
        for agent in self.agents.values():
            agent.sub.close(linger=0)
        self.agents.clear()

    def _take(self, agent: _Agent, topic: bytes, seq: int, batch: EventBatch) -> None:
        if seq == agent.expected:
            self.view.apply(topic, batch)
            agent.expected, agent.last_ts = seq + 1, max(agent.last_ts, batch.ts)
        elif seq < agent.expected and batch.ts <= agent.last_ts:
            self.skipped += 1  # the sync applied it already
        else:  # a gap (this subscriber was too slow) or a restarted agent: its ring holds the rest
            self.sync()
            if seq >= agent.expected:
                self.view.apply(topic, batch)
                agent.expected, agent.last_ts = seq + 1, max(agent.last_ts, batch.ts)

    def _replay(self, agent: _Agent) -> Iterator[tuple[float, int, bytes, EventBatch]]:
        """(ts, seq, topic, batch) of every message the agent's ring holds."""
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.RCVTIMEO, 10_000)
        dealer.connect(agent.replay)
        dealer.send_multipart((b"", (0).to_bytes(8, "big")))
        try:
            while True:
                _, topic, seq, payload = dealer.recv_multipart()
                if seq == END_SEQ:
                    return
                if self.topic_prefix and not topic.startswith(self.topic_prefix.encode()):
                    continue
                batch = decode_batch(payload)
                yield batch.ts, int.from_bytes(seq, "big"), topic, batch
        finally:
            dealer.close(linger=0)
