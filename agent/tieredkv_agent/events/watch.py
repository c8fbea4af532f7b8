"""A subscriber for people: the shared cache as the KV events describe it, next to the files on the volume.

usage: python -m tieredkv_agent.events.watch --connect tcp://AGENT:5557 [--connect ...]
                                             [--replay tcp://AGENT:5558 ...] [--volume DIR] [--seconds 10]

It replays each `--replay` endpoint from sequence 0 (the GC leader's ring starts with its snapshot), then
listens for `--seconds`, replaying an agent again when its sequence jumps, and prints one JSON line: the
blocks the events say the cache holds, and with `--volume` the block files there and the difference
(`missing`: on disk, not in the view; `extra`: in the view, not on disk).

It decodes with tieredkv's own structs (`wire.decode_batch`); the vLLM test tier does the same with vLLM's.
Runs on the main thread only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import zmq

from tieredkv_agent.events.sources import parse_block_path
from tieredkv_agent.events.wire import END_SEQ, AllBlocksCleared, BlockStored, decode_batch

Block = tuple[str | None, bytes | int, int | None]


class Watcher:
    """The set of blocks the events announce, from any number of agents, kept per topic (an
    AllBlocksCleared empties its topic: every block of that model in the cache)."""

    def __init__(self) -> None:
        self.by_topic: dict[bytes, set[Block]] = {}
        self.messages = 0
        self.clears = 0

    @property
    def blocks(self) -> set[Block]:
        return set().union(*self.by_topic.values())

    def apply(self, topic: bytes, payload: bytes) -> None:
        self.messages += 1
        blocks = self.by_topic.setdefault(topic, set())
        for event in decode_batch(payload).events:
            if isinstance(event, AllBlocksCleared):
                blocks.clear()
                self.clears += 1
                continue
            keys = {(event.ownership, h, event.group_idx) for h in event.block_hashes}
            if isinstance(event, BlockStored):
                blocks |= keys
            else:
                blocks -= keys


def replay(
    ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, start: int, watcher: Watcher, end: int | None = None
) -> int:
    """Apply every kept message of `endpoint` from `start` (up to, not including, `end`); the next
    sequence expected."""
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.RCVTIMEO, 10_000)
    dealer.connect(endpoint)
    dealer.send_multipart((b"", start.to_bytes(8, "big")))
    following = start
    try:
        while True:
            _, topic, seq, payload = dealer.recv_multipart()
            if seq == END_SEQ:
                return following
            n = int.from_bytes(seq, "big")
            if end is None or n < end:
                watcher.apply(topic, payload)
                following = n + 1
    finally:
        dealer.close(linger=0)


def volume_blocks(volume: Path) -> set[Block]:
    """(namespace directory, hash, group) of every block file under `volume`."""
    out: set[Block] = set()
    for path in volume.glob("*_r0/*/*_g*/*.bin"):
        parsed = parse_block_path(str(path))
        if parsed is not None:
            out.add((parsed[0].name, parsed[1], parsed[2]))
    return out


def watch(connect: list[str], replays: list[str], seconds: float) -> Watcher:
    """Subscribe to each agent, replay each from 0, listen for `seconds` (the caller's thread).

    `replays[i]` is the replay endpoint of the agent at `connect[i]` (or none at all): each agent gets
    its own SUB socket, so a gap or a restart (a lower sequence) is repaired from that agent's ring.
    """
    if replays and len(replays) != len(connect):
        raise ValueError("give one --replay per --connect, in the same order, or none")
    watcher = Watcher()
    with zmq.Context() as ctx:
        subs = []
        for endpoint in connect:
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt_string(zmq.SUBSCRIBE, "")
            sub.connect(endpoint)
            subs.append(sub)
        time.sleep(0.3)  # the subscriptions reach the agents before the replays end
        expected = [replay(ctx, endpoint, 0, watcher) for endpoint in replays]
        poller = zmq.Poller()
        for sub in subs:
            poller.register(sub, zmq.POLLIN)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for sub, _ in poller.poll(100):
                topic, seq, payload = sub.recv_multipart()
                n, i = int.from_bytes(seq, "big"), subs.index(sub)
                if replays and n != expected[i]:
                    start = 0 if n < expected[i] else expected[i]  # a restart, or a gap
                    replay(ctx, replays[i], start, watcher, end=n)
                watcher.apply(topic, payload)
                if replays:
                    expected[i] = n + 1
        for sub in subs:
            sub.close(linger=0)
    return watcher


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--connect", action="append", required=True, help="an agent's PUB endpoint")
    parser.add_argument("--replay", action="append", default=[], help="an agent's replay endpoint")
    parser.add_argument("--volume", type=Path, help="the cache's directory, to compare with")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    watcher = watch(args.connect, args.replay, args.seconds)
    report: dict[str, object] = {
        "view_blocks": len(watcher.blocks),
        "messages": watcher.messages,
        "clears": watcher.clears,
    }
    if args.volume is not None:
        disk = volume_blocks(args.volume)
        report.update(
            disk_blocks=len(disk),
            equal=disk == watcher.blocks,
            missing=len(disk - watcher.blocks),
            extra=len(watcher.blocks - disk),
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
