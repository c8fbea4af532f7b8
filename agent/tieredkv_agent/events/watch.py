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
from tieredkv_agent.events.wire import END_SEQ, BlockRemoved, BlockStored, decode_batch

Block = tuple[str | None, bytes | int, int | None]


class Watcher:
    """The set of blocks the events announce, from any number of agents."""

    def __init__(self) -> None:
        self.blocks: set[Block] = set()
        self.messages = 0

    def apply(self, payload: bytes) -> None:
        self.messages += 1
        for event in decode_batch(payload).events:
            if isinstance(event, BlockStored | BlockRemoved):
                keys = {(event.ownership, h, event.group_idx) for h in event.block_hashes}
                if isinstance(event, BlockStored):
                    self.blocks |= keys
                else:
                    self.blocks -= keys


def replay(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, start: int, watcher: Watcher) -> int:
    """Apply every kept message of `endpoint` from `start`; the next sequence expected."""
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.RCVTIMEO, 10_000)
    dealer.connect(endpoint)
    dealer.send_multipart((b"", start.to_bytes(8, "big")))
    following = start
    try:
        while True:
            _, _, seq, payload = dealer.recv_multipart()
            if seq == END_SEQ:
                return following
            watcher.apply(payload)
            following = int.from_bytes(seq, "big") + 1
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
    """Subscribe, replay, listen for `seconds` (the caller's thread)."""
    watcher = Watcher()
    with zmq.Context() as ctx:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt_string(zmq.SUBSCRIBE, "")
        for endpoint in connect:
            sub.connect(endpoint)
        time.sleep(0.3)  # the subscriptions reach the agents before the replays end
        expected = {endpoint: replay(ctx, endpoint, 0, watcher) for endpoint in replays}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not sub.poll(100):
                continue
            _, seq, payload = sub.recv_multipart()
            n = int.from_bytes(seq, "big")
            if len(replays) == 1 and n != expected[replays[0]]:
                # one agent: a gap or a restart (lower sequence) is repaired from its ring
                start = 0 if n < expected[replays[0]] else expected[replays[0]]
                replay(ctx, replays[0], start, watcher)
            watcher.apply(payload)
            if len(replays) == 1:
                expected[replays[0]] = n + 1
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
    report: dict[str, object] = {"view_blocks": len(watcher.blocks), "messages": watcher.messages}
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
