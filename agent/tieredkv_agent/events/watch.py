"""A subscriber for people: the shared cache as the KV events describe it, next to the files on the volume.

usage: python -m tieredkv_agent.events.watch --connect tcp://AGENT:5557 --replay tcp://AGENT:5558
                                             [--connect ... --replay ...] [--volume DIR] [--seconds 10]

It follows each agent (`--connect` and `--replay` in pairs, in the same order) as a router would
(`subscriber.Subscriber`: replays every ring, merged by timestamp, then listens for `--seconds`, syncing
again on a gap or a restart), and prints one JSON line: the blocks the events say the cache holds, and
with `--volume` the block files there and the difference (`missing`: on disk, not in the view; `extra`:
in the view, not on disk).

It decodes with tieredkv's own structs (`wire.decode_batch`); the vLLM test tier does the same with vLLM's.
Runs on the main thread only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import zmq

from tieredkv_agent.events.sources import parse_block_path
from tieredkv_agent.events.subscriber import Block, Subscriber, View


def watch(connect: list[str], replays: list[str], seconds: float) -> View:
    """Follow the agents for `seconds` (the caller's thread); the view at the end."""
    if len(replays) != len(connect):
        raise ValueError("give one --replay per --connect, in the same order")
    with zmq.Context() as ctx:
        subscriber = Subscriber(ctx)
        try:
            subscriber.set_agents({pub: (pub, replay) for pub, replay in zip(connect, replays, strict=True)})
            subscriber.run(seconds)
        finally:
            subscriber.close()
    return subscriber.view


def volume_blocks(volume: Path) -> set[Block]:
    """(namespace directory, hash, group) of every block file under `volume`."""
    out: set[Block] = set()
    for path in volume.glob("*_r0/*/*_g*/*.bin"):
        parsed = parse_block_path(str(path))
        if parsed is not None:
            out.add((parsed[0].name, parsed[1], parsed[2]))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--connect", action="append", required=True, help="an agent's PUB endpoint")
    parser.add_argument("--replay", action="append", required=True, help="that agent's replay endpoint")
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
