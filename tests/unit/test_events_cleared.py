"""AllBlocksCleared: the GC leader's walk finds a model with no block left on the volume (wiped, replaced,
removed by hand) and says so once; a subscriber's view of that model empties and equals the files again."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.unit.test_events_sources import BLOCK, Recorder, block_files, key, store
from tests.unit.test_events_summary import CONFIG, block_hash, put
from tieredkv_agent.capacity.manager import CapacityManager
from tieredkv_agent.events import BlockEvents, Change, KvEventPublisher, pool_identity
from tieredkv_agent.events.announce import WalkAnnouncer
from tieredkv_agent.events.summary import MembershipSummary
from tieredkv_agent.events.summary_server import SummaryService
from tieredkv_agent.store.naming import KvCacheGroup, RunConfig, ensure_namespace, namespace_for
from tieredkv_agent.tiers.file import FileTier

pytestmark = pytest.mark.unit

OTHER = RunConfig("org/other", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0",)),))
TOPIC = "kv@pool:ns/c@org/model"
OTHER_TOPIC = "kv@pool:ns/c@org/other"


def walker(root: Path, sink: Recorder) -> tuple[MembershipSummary, WalkAnnouncer]:
    events = BlockEvents(sink, "pool:ns/c")
    events.root = root
    summary = MembershipSummary(root)
    announcer = WalkAnnouncer(events, lambda: True, announce_new=False).attach(summary)
    return summary, announcer


def clears(sink: Recorder) -> list[str]:
    return [c.topic for c in sink.changes if c.cleared]


def test_a_wiped_model_is_cleared_once_on_its_topic_and_again_only_after_it_held_blocks(
    tmp_path: Path,
) -> None:
    model, other = namespace_for(tmp_path, CONFIG), namespace_for(tmp_path, OTHER)
    for namespace in (model, other):
        ensure_namespace(namespace)
        put(namespace.blocks_dir, 1)
    sink = Recorder()
    summary, announcer = walker(tmp_path, sink)
    summary.rebuild()  # the leader's snapshot: both models cleared, then their blocks
    assert sorted(clears(sink)) == [TOPIC, OTHER_TOPIC]
    sink.changes.clear()
    summary.rebuild()
    assert clears(sink) == []
    shutil.rmtree(model.blocks_dir)  # the model's blocks removed wholesale; org/other keeps its own
    summary.rebuild()
    assert clears(sink) == [TOPIC]
    summary.rebuild()
    assert clears(sink) == [TOPIC], "said once while the model stays empty"
    put(model.blocks_dir, 2)
    summary.rebuild()
    shutil.rmtree(tmp_path)  # the whole volume wiped, config.json files included
    tmp_path.mkdir()
    summary.rebuild()
    assert sorted(clears(sink)) == sorted([TOPIC, TOPIC, OTHER_TOPIC])
    assert announcer.clears == 5


def test_a_new_leader_clears_a_model_whose_namespace_holds_no_block_on_its_first_walk(tmp_path: Path) -> None:
    ensure_namespace(namespace_for(tmp_path, CONFIG))  # config.json, no blocks: a volume reset under it
    sink = Recorder()
    summary, _ = walker(tmp_path, sink)
    summary.rebuild()
    assert clears(sink) == [TOPIC]
    assert all(c.cleared for c in sink.changes)


class StoringSink(Recorder):
    """A sink that, as a clear is queued, has another agent store a block of the cleared model."""

    def __init__(self, blocks_dir: Path) -> None:
        super().__init__()
        self.blocks_dir = blocks_dir
        self.stored = 100

    def publish_waiting(self, change: Change, timeout_s: float = 5.0) -> bool:
        if change.cleared:
            self.stored += 1
            put(self.blocks_dir, self.stored)
        return self.publish(change)


def test_a_block_stored_while_a_clear_is_queued_is_announced_after_it(tmp_path: Path) -> None:
    namespace = namespace_for(tmp_path, CONFIG)
    ensure_namespace(namespace)
    sink = StoringSink(namespace.blocks_dir)
    summary, _ = walker(tmp_path, sink)
    summary.rebuild()  # the snapshot: cleared before the walk, which finds block 101
    shutil.rmtree(namespace.blocks_dir)
    summary.rebuild()  # found empty: cleared, and block 102 (stored meanwhile) announced again
    assert [(c.cleared, c.removed, c.block_hash) for c in sink.changes] == [
        (True, True, b""),
        (False, False, block_hash(101)),
        (True, True, b""),
        (False, False, block_hash(102)),
    ]


def test_the_watch_tool_empties_a_wiped_models_view_and_it_equals_the_files_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tieredkv_agent.events.watch import main

    publisher = KvEventPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    events = BlockEvents(publisher, pool_identity("ns", "cache"))
    events.root = tmp_path
    tier = FileTier(root_dir=tmp_path, on_block_file=events.block_file)
    summary = MembershipSummary(tmp_path)
    WalkAnnouncer(events, lambda: True, announce_new=False).attach(summary)
    try:
        first, second = tier.namespace(CONFIG), tier.namespace(OTHER)
        store(tier, first, [key(n) for n in range(30)])
        store(tier, second, [key(n) for n in range(30, 40)], job_id=2)
        summary.rebuild()
        shutil.rmtree(first.blocks_dir)  # org/model's blocks, gone without GC
        summary.rebuild()
        while publisher.stats().queued_events:
            time.sleep(0.01)
        assert publisher.replay_endpoint is not None
        args = ["--connect", publisher.endpoint, "--replay", publisher.replay_endpoint, "--seconds", "0.3"]
        main([*args, "--volume", str(tmp_path)])
    finally:
        tier.shutdown(2.0)
        publisher.close()
    report = json.loads(capsys.readouterr().out)
    assert report["equal"] is True and report["clears"] == 3  # two in the snapshot, one for the wipe
    assert report["view_blocks"] == report["disk_blocks"] == len(block_files(tmp_path)) == 10


def test_gaining_gc_leadership_walks_the_volume_at_once_instead_of_an_interval_later(tmp_path: Path) -> None:
    summary = MembershipSummary(tmp_path)
    service = SummaryService(summary, "127.0.0.1", 0, interval_s=3600)
    manager = CapacityManager(tmp_path, max_bytes=100 * BLOCK, watch_filesystem=False)
    manager.on_leader_gained = service.wake
    service.start()
    try:
        deadline = time.monotonic() + 5
        while summary.version < 1:  # the walk at start
            assert time.monotonic() < deadline
            time.sleep(0.01)
        threading.Thread(target=manager._on_leader_change, args=(False,)).start()
        time.sleep(0.2)
        assert summary.version == 1, "losing leadership is no reason to walk"
        manager._on_leader_change(True)  # what the elector's thread calls
        while summary.version < 2:
            assert time.monotonic() < deadline, "no walk within 5 s of gaining leadership"
            time.sleep(0.01)
    finally:
        service.stop()


def test_leadership_gained_during_a_walk_waits_for_the_next_walk_to_clear_and_snapshot(
    tmp_path: Path,
) -> None:
    namespace = namespace_for(tmp_path, CONFIG)
    ensure_namespace(namespace)
    put(namespace.blocks_dir, 1)
    sink, leader = Recorder(), [False]
    events = BlockEvents(sink, "pool:ns/c")
    events.root = tmp_path
    summary = MembershipSummary(tmp_path)
    announcer = WalkAnnouncer(events, lambda: leader[0], announce_new=False).attach(summary)

    def leadership_arrives_mid_walk() -> None:
        announcer.before_walk()
        leader[0] = True

    summary.before_walk = leadership_arrives_mid_walk
    summary.rebuild()
    assert sink.changes == [], "a walk begun without the clear is no snapshot"
    summary.before_walk = announcer.before_walk
    summary.rebuild()
    assert [(c.cleared, c.block_hash) for c in sink.changes] == [(True, b""), (False, block_hash(1))]
