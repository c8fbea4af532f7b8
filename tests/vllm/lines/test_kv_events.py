"""The agent's KV events, decoded by the vLLM line's own event classes, describe the shared volume exactly.

vLLM's TieringOffloadingManager (the line's unmodified code) stores many prompts through a real agent with
events on and a small capacity, so its GC deletes blocks while and after they are stored. A subscriber built
on the line's `KVEventBatch` decoder keeps the set of blocks the events announce; it must equal the block
files on the volume, name exactly the hashes vLLM's own hashing gives, and a late subscriber that replays
from sequence 0 must rebuild the same set.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from vllm.distributed.kv_events import (
    MEDIUM_STORAGE,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventBatch,
)
from vllm.v1.core import kv_cache_utils
from vllm.v1.kv_offload.base import get_offload_block_hash

from tests.unit.agent_process import free_port
from tests.unit.contract_harness import AgentProcess, Cache
from tests.vllm.lines.conftest import EngineFactory
from tests.vllm.lines.manager_engine import TOKENS_PER_BLOCK, ManagerEngine
from tieredkv_agent.events import parse_block_path
from tieredkv_agent.events.summary import positions

pytestmark = pytest.mark.vllm

PROMPTS = 24
BLOCKS_PER_PROMPT = 16
BLOCK = 65536
MAX_BLOCKS = 160
"""Capacity in blocks: the run stores 384, so GC (high 0.9, low 0.5) deletes while and after it stores."""
TOPIC = "kv@pool:team/shared@tieredkv/tiny-llama"
WAIT_S = 60.0

Block = tuple[str | None, bytes | int, int | None]


@pytest.fixture(autouse=True)
def unseeded_afterwards() -> Iterator[None]:
    """vLLM's NONE_HASH is process-wide and these tests seed it: leave the process unseeded if it was (the
    tiering-manager tests check that a tier says hello only after vLLM seeds its hashes)."""
    seeded = hasattr(kv_cache_utils, "NONE_HASH")
    yield
    if not seeded and hasattr(kv_cache_utils, "NONE_HASH"):
        delattr(kv_cache_utils, "NONE_HASH")


class View:
    """A router's view of the shared cache, built only from the events vLLM's classes decode."""

    def __init__(self, replay: Callable[[int], list[tuple[bytes, bytes, bytes]]] | None = None) -> None:
        self.decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
        self.blocks: set[Block] = set()
        self.stored_hashes: set[bytes | int] = set()
        self.seqs: list[int] = []
        self.replay = replay
        self.replays: list[tuple[int, int]] = []
        self.clears = 0

    def take(self, topic: bytes, seq: bytes, payload: bytes) -> None:
        """A live message; on a gap, first what the replay socket kept before it (the documented rule: a
        lower sequence than expected means a restarted publisher, so replay it from 0)."""
        n = int.from_bytes(seq, "big")
        expected = self.seqs[-1] + 1 if self.seqs else 0  # a first message after 0: subscribed late
        if n != expected and self.replay is not None:
            start = 0 if n < expected else expected
            self.replays.append((start, n))
            for missed in self.replay(start):
                if int.from_bytes(missed[1], "big") < n:
                    self.apply(*missed)
        self.apply(topic, seq, payload)

    def apply(self, topic: bytes, seq: bytes, payload: bytes) -> None:
        assert topic.decode() == TOPIC
        self.seqs.append(int.from_bytes(seq, "big"))
        for event in self.decoder.decode(payload).events:
            if isinstance(event, AllBlocksCleared):  # every block of this topic (one model) is gone
                self.blocks.clear()
                self.clears += 1
                continue
            assert isinstance(event, BlockStored | BlockRemoved), event
            assert event.medium == MEDIUM_STORAGE
            blocks = {(event.ownership, h, event.group_idx) for h in event.block_hashes}
            if isinstance(event, BlockStored):
                assert (event.token_ids, event.block_size, event.parent_block_hash) == ([], 0, None)
                self.stored_hashes.update(event.block_hashes)
                self.blocks |= blocks
            else:
                self.blocks -= blocks


def block_files(volume: Path) -> set[Block]:
    """(namespace directory, hash, group) of every block file on the volume (GC may remove directories
    while this walks: os.walk skips what vanished)."""
    out: set[Block] = set()
    for directory, _, names in os.walk(volume):
        for name in names:
            parsed = parse_block_path(os.path.join(directory, name))  # noqa: PTH118 - a str path is needed
            if parsed is not None:
                out.add((parsed[0].name, parsed[1], parsed[2]))
    return out


def events_environ(cache: Cache, pub: int, replay: int, summary: int = 0) -> dict[str, str]:
    """The agent's environment as the operator renders it, with events on and a small capacity."""
    environ = cache.agent_environ()
    settings = {
        "EVENTS_ENABLED": "true",
        "EVENTS_PORT": str(pub),
        "EVENTS_REPLAY_PORT": str(replay),
        "EVENTS_SUMMARY_PORT": str(summary),
        "EVENTS_SUMMARY_INTERVAL_SECONDS": "1",
        "POD_IP": "127.0.0.1",
        "MAX_BYTES": str(MAX_BLOCKS * BLOCK),
        "HIGH_WATERMARK": "0.9",
        "LOW_WATERMARK": "0.5",
        "GC_GRACE_SECONDS": "0",
        "GC_SCAN_INTERVAL_SECONDS": "0.3",
    }
    environ.update({f"TIEREDKV_{name}": value for name, value in settings.items()})
    return environ


@pytest.fixture
def events_agent(
    cache: Cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[AgentProcess, str, str, str]]:
    """A real agent with events on, a capacity of MAX_BLOCKS blocks and a GC pass every 0.3 s."""
    pub, replay, summary = free_port(), free_port(), free_port()
    environ = events_environ(cache, pub, replay, summary)
    monkeypatch.setattr(cache, "agent_environ", lambda: environ)
    agent = AgentProcess(cache, tmp_path / "agent.log")
    yield agent, f"tcp://127.0.0.1:{pub}", f"tcp://127.0.0.1:{replay}", f"http://127.0.0.1:{summary}"
    agent.stop()


def receive_until_equal(sub: zmq.Socket[bytes], view: View, volume: Path) -> None:
    """Take messages until GC brought the volume under its high watermark, the view equals the files and
    nothing more arrives for a second."""
    deadline = time.monotonic() + WAIT_S
    quiet_since = time.monotonic()
    while time.monotonic() < deadline and len(block_files(volume)) > 0.9 * MAX_BLOCKS:
        if sub.poll(100):
            view.take(*sub.recv_multipart())
    while time.monotonic() < deadline:
        if sub.poll(100):
            view.take(*sub.recv_multipart())
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 1.0 and view.blocks == block_files(volume):
            return
    assert view.blocks == block_files(volume)


def replayed(
    ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, start: int
) -> list[tuple[bytes, bytes, bytes]]:
    """Every message the agent kept from sequence `start` on, through the replay socket."""
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.RCVTIMEO, 10_000)
    dealer.connect(endpoint)
    dealer.send_multipart((b"", start.to_bytes(8, "big")))
    out = []
    while True:
        _, topic, seq, payload = dealer.recv_multipart()
        if int.from_bytes(seq, "big", signed=True) == -1:
            dealer.close(linger=0)
            return out
        out.append((topic, seq, payload))


def replay_all(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> View:
    """A late subscriber: everything the agent kept, from sequence 0."""
    view = View()
    for message in replayed(ctx, endpoint, 0):
        view.apply(*message)
    return view


def store_prompts(
    engine: ManagerEngine, first: int, count: int, sub: zmq.Socket[bytes], view: View
) -> list[bytes]:
    """Run `count` prompts of BLOCKS_PER_PROMPT fresh blocks each; their offload keys."""
    keys: list[bytes] = []
    for n in range(first, first + count):
        prompt = [(n * 7919 + i * 31) % 1000 for i in range(BLOCKS_PER_PROMPT * TOKENS_PER_BLOCK)]
        keys += engine.keys(prompt)
        assert engine.run_request(f"r-{n}", prompt).stored == BLOCKS_PER_PROMPT
        while sub.poll(0):
            view.take(*sub.recv_multipart())
    return keys


def assert_summary_holds(url: str, on_disk: set[Block]) -> None:
    """A walk after the run (every second here) gives filters that hold every block on disk."""
    first = fetch_index(url)["version"]
    deadline = time.monotonic() + WAIT_S
    while (index := fetch_index(url))["version"] < first + 2:  # a walk that began after GC settled
        assert time.monotonic() < deadline, "the summary was not rebuilt"
        time.sleep(0.2)
    for name, entry in index["namespaces"].items():
        with urllib.request.urlopen(url + entry["path"], timeout=5) as reply:
            data, bits = reply.read(), int(reply.headers["X-Tieredkv-Bits"])
        mine = [h for ns, h, _ in on_disk if ns == name]
        assert entry["blocks"] == len(mine) and entry["model"] == "tieredkv/tiny-llama"
        for h in mine:
            assert isinstance(h, bytes)
            assert all(data[p // 8] & (1 << (p % 8)) for p in positions(h, bits))


def fetch_index(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/kv/summary", timeout=5) as reply:
        index: dict[str, Any] = json.loads(reply.read())
    return index


def test_the_events_rebuild_the_volume_after_a_store_heavy_run_and_gc_and_a_late_subscriber_replays_it(
    events_agent: tuple[AgentProcess, str, str, str], engines: EngineFactory, cache: Cache
) -> None:
    agent, endpoint, replay_endpoint, summary_url = events_agent
    with zmq.Context() as ctx:
        sub = ctx.socket(zmq.SUB)
        sub.connect(endpoint)
        sub.setsockopt_string(zmq.SUBSCRIBE, "kv@pool:team/shared@")
        time.sleep(0.5)  # the subscription reaches the agent before the first store
        engine = engines("a")
        engine.seed_hashes()
        engine.wait_connected()
        view = View(lambda start: replayed(ctx, replay_endpoint, start))
        keys = store_prompts(engine, 0, PROMPTS, sub, view)
        receive_until_equal(sub, view, cache.volume)
        on_disk = block_files(cache.volume)
        assert 0 < len(on_disk) <= 0.9 * MAX_BLOCKS, "GC did not run"
        assert view.blocks == on_disk
        assert view.stored_hashes == {get_offload_block_hash(key) for key in keys}
        assert view.seqs == list(range(len(view.seqs)))
        late = replay_all(ctx, replay_endpoint)
        assert late.blocks == on_disk
        assert late.seqs == view.seqs
        assert_summary_holds(summary_url, on_disk)
        sub.close(linger=0)
    assert "KV events for pool:team/shared" in agent.log()


def test_across_an_agent_restart_a_connected_subscriber_stays_equal_and_a_late_one_replays_the_volume(
    cache: Cache, engines: EngineFactory, tmp_path: Path
) -> None:
    pub, replay = free_port(), free_port()
    environ = events_environ(cache, pub, replay, free_port())
    cache.agent_environ = lambda: environ  # type: ignore[method-assign]
    agent = AgentProcess(cache, tmp_path / "agent-1.log")
    with zmq.Context() as ctx:
        sub = ctx.socket(zmq.SUB)
        sub.connect(f"tcp://127.0.0.1:{pub}")
        sub.setsockopt_string(zmq.SUBSCRIBE, "")
        time.sleep(0.5)
        engine = engines("a")
        engine.seed_hashes()
        engine.wait_connected()
        view = View(lambda start: replayed(ctx, f"tcp://127.0.0.1:{replay}", start))
        try:
            store_prompts(engine, 0, PROMPTS // 2, sub, view)
            receive_until_equal(sub, view, cache.volume)
        finally:
            agent.stop()
        restarted = AgentProcess(cache, tmp_path / "agent-2.log")  # same ports: ZMQ reconnects the SUB
        try:
            time.sleep(0.5)
            engine.wait_connected()
            before = len(view.seqs)
            store_prompts(engine, PROMPTS, PROMPTS, sub, view)
            receive_until_equal(sub, view, cache.volume)
            assert view.seqs[before] == 0  # a new publisher: its sequence starts again ...
            assert view.seqs[before:] == list(range(len(view.seqs) - before))  # ... and none was missed
            assert view.blocks == block_files(cache.volume)
            assert len(view.blocks) <= 0.9 * MAX_BLOCKS
            deadline = time.monotonic() + WAIT_S  # the restarted leader's first walk announces the volume
            while "announced snapshot of" not in restarted.log():
                assert time.monotonic() < deadline, restarted.log()
                time.sleep(0.1)
            late = replay_all(ctx, f"tcp://127.0.0.1:{replay}")
            assert late.blocks == block_files(cache.volume)  # including what was stored before the restart
        finally:
            sub.close(linger=0)
            restarted.stop()


def test_a_wiped_volume_is_announced_as_all_blocks_cleared_and_the_view_follows_the_files_after_it(
    events_agent: tuple[AgentProcess, str, str, str], engines: EngineFactory, cache: Cache
) -> None:
    _, endpoint, replay_endpoint, _ = events_agent
    with zmq.Context() as ctx:
        sub = ctx.socket(zmq.SUB)
        sub.connect(endpoint)
        sub.setsockopt_string(zmq.SUBSCRIBE, "kv@pool:team/shared@")
        time.sleep(0.5)
        engine = engines("a")
        engine.seed_hashes()
        engine.wait_connected()
        view = View(lambda start: replayed(ctx, replay_endpoint, start))
        store_prompts(engine, 0, 4, sub, view)
        receive_until_equal(sub, view, cache.volume)
        assert view.blocks and view.clears == 0
        for blocks_dir in cache.volume.glob("*_r0"):  # the volume reset under the running agent
            shutil.rmtree(blocks_dir)
        deadline = time.monotonic() + WAIT_S  # the next walk (every second here) finds the model empty
        while view.clears == 0:
            assert time.monotonic() < deadline, "no AllBlocksCleared"
            if sub.poll(100):
                view.take(*sub.recv_multipart())
        assert view.blocks == block_files(cache.volume) == set()
        store_prompts(engine, 100, 4, sub, view)
        receive_until_equal(sub, view, cache.volume)
        assert view.blocks and view.clears == 1
        late = replay_all(ctx, replay_endpoint)  # the clear is in the ring too: a late view is exact
        assert late.blocks == view.blocks == block_files(cache.volume)
        sub.close(linger=0)
