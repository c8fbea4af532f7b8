"""The agent's file tier on GlusterFS: O_DIRECT probe, throughput per client, cross-client visibility latency.

usage: PYTHONPATH=hack .venv/bin/python bench/gluster_io.py [--blocks 32] [--block-mib 2] [--reps 3]
           [--threads 1,4,8] [--visibility 100] [--local /var/tmp] [--out FILE.json]

Starts the dev cluster's GlusterFS (`tieredkv_devcluster.gluster.standalone`: a private glusterd, a distribute
volume over two bricks on this machine's disk, two FUSE clients standing for two nodes), then per rep and
thread count T (rotating the order per rep):

  tier      FileTier through client 1 (ceil(T/2) read, floor(T/2) write threads; O_DIRECT as its probe
            decides): store every block as jobs of 16; load them back through client 1 (same client) and
            through a FileTier on client 2 (the other node); both clients storing their own blocks at once.
  buffered  the same with O_DIRECT off (`direct=False`): what the probe's answer costs or gains here.
  plain     vLLM's fs-tier protocol as a plain loop: T threads, open(tmp, O_CREAT|O_EXCL), buffered write,
            rename through client 1; load open + read through client 2. It emulates vLLM's protocol; it
            is not vLLM's code (vLLM's own tier runs in the vLLM venv, not measured here).
  local     the same tier runs on a local directory (`--local`), for a same-run ratio.

Visibility: client 1 publishes a block with BlockFiles.store; client 2 polls the name (access(2)) until it
is there: "fresh" names client 2 never asked about, "negative" names it looked up (and missed) just before.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent_io import Buffers, jobs_of, make_keys, run_tier  # bench/ is the script's directory
from tieredkv_agent.store.blockio import BlockFiles, probe_o_direct
from tieredkv_agent.store.naming import KvCacheGroup, RunConfig, namespace_for
from tieredkv_agent.tiers.file import FileTier
from tieredkv_devcluster import gluster

CONFIG = RunConfig("bench/gluster", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0",)),))
PER_JOB = 16


def tier_for(root: Path, threads: int, backlog: int, direct: bool | None = None) -> FileTier:
    reads = math.ceil(threads / 2)
    writes = max(1, threads - reads)
    return FileTier(
        root_dir=root,
        read_threads=reads,
        write_threads=writes,
        max_store_backlog_bytes=backlog,
        direct=direct,
    )


def tier_pass(
    one: Path, two: Path, threads: int, bufs: Buffers, tag: str, *, direct: bool | None = None
) -> dict[str, float]:
    """Store via client 1, load via client 1 and via client 2; GB/s of each."""
    gbytes, backlog = len(bufs.src) / 1e9, 4 * len(bufs.src)
    writer, reader = tier_for(one, threads, backlog, direct), tier_for(two, threads, backlog, direct)
    try:
        keys = make_keys(tag, len(bufs.src_views))
        stores = jobs_of(writer.namespace(CONFIG), keys, bufs.src_views, PER_JOB)
        out = {"store_gbps": gbytes / run_tier(writer, stores, False)}
        for name, tier in (("load_same_client_gbps", writer), ("load_other_client_gbps", reader)):
            loads = jobs_of(tier.namespace(CONFIG), keys, bufs.dst_views, PER_JOB)
            out[name] = gbytes / run_tier(tier, loads, True)
            bufs.check_and_clear(f"{name} T={threads}")
        return out
    finally:
        writer.shutdown(5.0)
        reader.shutdown(5.0)


def both_clients_store(one: Path, two: Path, threads: int, bufs: Buffers, tag: str) -> float:
    """Aggregate GB/s of the two clients storing their own blocks (the same bytes, other keys) at once."""
    tiers = [tier_for(root, threads, 4 * len(bufs.src)) for root in (one, two)]
    try:
        jobs = [
            jobs_of(
                t.namespace(CONFIG), make_keys(f"{tag}-{n}", len(bufs.src_views)), bufs.src_views, PER_JOB
            )
            for n, t in enumerate(tiers)
        ]
        started = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda n: run_tier(tiers[n], jobs[n], False), (0, 1)))
        return 2 * len(bufs.src) / 1e9 / (time.perf_counter() - started)
    finally:
        for t in tiers:
            t.shutdown(5.0)


def plain_pass(one: Path, two: Path, threads: int, bufs: Buffers, tag: str) -> dict[str, float]:
    """vLLM's store protocol (O_EXCL temp, buffered write, rename) via client 1; buffered loads via 2."""
    keys = make_keys(tag, len(bufs.src_views))
    stored = [namespace_for(one, CONFIG).block_path(k) for k in keys]
    loaded = [namespace_for(two, CONFIG).block_path(k) for k in keys]

    def store(path: str, view: memoryview) -> None:
        tmp = f"{path}_{threading.get_ident()}.tmp"
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, view)
        finally:
            os.close(fd)
        Path(tmp).rename(path)

    def load(path: str, view: memoryview) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.preadv(fd, [view], 0)
        finally:
            os.close(fd)

    out = {}
    passes = (("store_gbps", store, stored, bufs.src_views), ("load_gbps", load, loaded, bufs.dst_views))
    for name, work, paths, views in passes:
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, paths, views))
        out[name] = len(bufs.src) / 1e9 / (time.perf_counter() - started)
    bufs.check_and_clear(f"plain T={threads}")
    return out


def visibility(one: Path, two: Path, count: int, block: int) -> dict[str, dict[str, float]]:
    """Seconds from client 1's publish returning to client 2 seeing the name, per kind of name."""
    files, data = BlockFiles(direct=False), bytes(block)
    src, dst = namespace_for(one, CONFIG), namespace_for(two, CONFIG)
    out: dict[str, dict[str, float]] = {}
    for kind in ("fresh", "negative"):
        samples, polls = [], []
        for key in make_keys(f"vis-{kind}", count):
            if kind == "negative":
                assert not os.access(dst.block_path(key), os.F_OK)
            assert files.store(src.block_path(key), data).ok
            published, tries = time.perf_counter(), 1
            while not os.access(dst.block_path(key), os.F_OK):
                tries += 1
                if time.perf_counter() - published > 10:
                    raise RuntimeError("a block stayed invisible to client 2 for 10 s")
            samples.append(time.perf_counter() - published)
            polls.append(tries)
        samples.sort()
        out[kind] = {
            "first_look_hits": sum(p == 1 for p in polls) / len(polls),
            "max_looks": max(polls),
            "median_ms": 1e3 * statistics.median(samples),
            "p99_ms": 1e3 * samples[int(0.99 * (len(samples) - 1))],
            "max_ms": 1e3 * samples[-1],
        }
    return out


def median_of(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}


def one_round(one: Path, two: Path, local: Path, threads: int, bufs: Buffers) -> dict[str, dict[str, float]]:
    """Every variant once at `threads`, each on its own names (`one`, `two`: one directory, two clients)."""
    both = both_clients_store(one, two, threads, bufs, "both")
    return {
        f"tier T={threads}": tier_pass(one, two, threads, bufs, "tier"),
        f"buffered T={threads}": tier_pass(one, two, threads, bufs, "buffered", direct=False),
        f"both_clients_store T={threads}": {"aggregate_gbps": both},
        f"plain T={threads}": plain_pass(one, two, threads, bufs, "plain"),
        f"local T={threads}": tier_pass(local, local, threads, bufs, "local"),
    }


def measure(args: argparse.Namespace, one: Path, two: Path) -> dict[str, Any]:
    bufs = Buffers.make(args.blocks, args.block_mib << 20)
    local = Path(tempfile.mkdtemp(prefix="tieredkv-gluster-bench-", dir=args.local))
    raw: dict[str, list[dict[str, float]]] = {}
    try:
        for rep in range(args.reps):
            for threads in args.threads:
                tag = f"r{rep}t{threads}"
                (one / tag).mkdir()
                (local / tag).mkdir()
                for name, row in one_round(one / tag, two / tag, local / tag, threads, bufs).items():
                    raw.setdefault(name, []).append(row)
                shutil.rmtree(one / tag)
                shutil.rmtree(local / tag)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    (one / "vis").mkdir()
    return {
        "o_direct_probe": {
            "client-1": probe_o_direct(one),
            "client-2": probe_o_direct(two),
            "local": probe_o_direct(args.local),
        },
        "summary": {name: median_of(rows) for name, rows in raw.items()},
        "visibility": visibility(one / "vis", two / "vis", args.visibility, 4096),
        "raw": raw,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--block-mib", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8])
    parser.add_argument("--visibility", type=int, default=100, help="blocks per visibility sample kind")
    parser.add_argument("--local", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tieredkv-gluster-bench-"))
    try:
        with gluster.standalone(root) as (one, two):
            result = {
                "blocks": args.blocks,
                "block_bytes": args.block_mib << 20,
                "reps": args.reps,
                "cpus": os.cpu_count(),
                **measure(args, one, two),
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(json.dumps({k: result[k] for k in ("o_direct_probe", "summary", "visibility")}, indent=2))


if __name__ == "__main__":
    main()
