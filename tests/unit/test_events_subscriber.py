"""The router-side procedure (`events.subscriber`) over two real publishers on one volume: one agent
stores, the GC leader stores and deletes, the leader is replaced by a new process; a subscriber that stayed
connected and one that starts afterwards both hold exactly the files on the volume."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import zmq

from tests.unit.test_events_sources import BLOCK, CONFIG, IDENTITY, block_files, key, store
from tieredkv_agent.capacity.manager import CapacityManager
from tieredkv_agent.events import BlockEvents, KvEventPublisher
from tieredkv_agent.events.announce import WalkAnnouncer
from tieredkv_agent.events.subscriber import Subscriber
from tieredkv_agent.events.summary import MembershipSummary
from tieredkv_agent.tiers.file import FileTier

pytestmark = pytest.mark.unit


class Agent:
    """One agent's events part over the shared volume: publisher, file tier and, as leader, GC and walks."""

    def __init__(self, root: Path, *, leader: bool) -> None:
        self.publisher = KvEventPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
        self.events = BlockEvents(self.publisher, IDENTITY)
        self.events.root = root
        self.tier = FileTier(root_dir=root, on_block_file=self.events.block_file)
        self.summary = MembershipSummary(root)
        WalkAnnouncer(self.events, lambda: leader, announce_new=False).attach(self.summary)
        self.gc = CapacityManager(
            root, max_bytes=60 * BLOCK, high_watermark=0.8, low_watermark=0.5, watch_filesystem=False
        )
        self.gc.on_evicted = self.events.evicted

    @property
    def endpoints(self) -> tuple[str, str]:
        assert self.publisher.replay_endpoint is not None
        return self.publisher.endpoint, self.publisher.replay_endpoint

    def settle(self) -> None:
        while self.publisher.stats().queued_events:
            time.sleep(0.01)

    def close(self) -> None:
        self.tier.shutdown(2.0)
        self.publisher.close()


def follow(subscriber: Subscriber, root: Path, seconds: float = 5.0) -> None:
    """Take messages until the view equals the files (or fail after `seconds`)."""
    deadline = time.monotonic() + seconds
    while subscriber.view.blocks != block_files(root):
        assert time.monotonic() < deadline, "the view never equalled the files"
        subscriber.poll(50)


def test_a_connected_and_a_late_subscriber_equal_the_files_across_stores_gc_and_a_new_leader(
    tmp_path: Path,
) -> None:
    other, leader = Agent(tmp_path, leader=False), Agent(tmp_path, leader=True)
    agents = [other, leader]
    try:
        with zmq.Context() as ctx:
            connected = Subscriber(ctx)
            connected.set_agents({"other": other.endpoints, "leader": leader.endpoints})
            leader.summary.rebuild()  # the leader's first walk: an empty volume's snapshot
            namespace = other.tier.namespace(CONFIG)
            store(other.tier, namespace, [key(n) for n in range(50)])
            store(leader.tier, leader.tier.namespace(CONFIG), [key(n) for n in range(40, 90)], job_id=2)
            old = time.time() - 3600
            for path in tmp_path.rglob("*.bin"):
                os.utime(path, (old, old))
            assert leader.gc.run_pass().eviction.files > 0
            follow(connected, tmp_path)
            assert 0 < len(connected.view.blocks) <= 0.8 * 60

            leader.close()  # a new leader process: new address, empty ring, first walk = snapshot
            agents.remove(leader)
            new = Agent(tmp_path, leader=True)
            agents.append(new)
            new.summary.rebuild()
            store(other.tier, namespace, [key(n) for n in range(100, 110)], job_id=3)
            new.settle()
            other.settle()
            connected.set_agents({"other": other.endpoints, "new": new.endpoints})
            follow(connected, tmp_path)

            late = Subscriber(ctx)  # replays both rings: the other agent's stores of blocks the old
            late.set_agents({"other": other.endpoints, "new": new.endpoints})  # leader deleted come first
            assert late.view.blocks == block_files(tmp_path)
            assert late.view.clears == 1
            connected.close()
            late.close()
    finally:
        for agent in agents:
            agent.close()
