"""Store/load throughput of the agent's file tier vs a plain O_DIRECT loop; lookup cost; index memory.

usage: .venv/bin/python bench/agent_io.py [--dir /var/tmp/tieredkv-agent-io] [--blocks 512] [--reps 3]
                                          [--threads 1,2,4,8] [--job-blocks 1,16] [--out FILE.json]

Per rep and thread count T, in a rotating order, each on fresh files in the same directory:
  plain     T threads (ThreadPoolExecutor), one block per task: open(tmp, O_CREAT|O_EXCL|O_DIRECT), write,
            close, rename (mkdir on ENOENT); load: open(O_DIRECT), preadv, close. Same paths as the tier.
  tier/jN   FileTier with ceil(T/2) read + floor(T/2) write threads, all blocks submitted as jobs of N
            blocks at once; timed from the first submit to the last completion.
Loads run after `sync; echo 3 > /proc/sys/vm/drop_caches` (when permitted) and use O_DIRECT in both
cases, so the guest page cache never serves them; the host's cache under the virtual disk still can.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import mmap
import os
import shutil
import statistics
import subprocess
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tieredkv_agent.engine.index import LookupIndex
from tieredkv_agent.engine.jobs import BlockJob, JobResult
from tieredkv_agent.store.blockio import O_DIRECT
from tieredkv_agent.store.naming import KvCacheGroup, Namespace, RunConfig, make_offload_key, namespace_for
from tieredkv_agent.tiers.file import FileTier

CONFIG = RunConfig("bench/model", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0",)),))
CREATE = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_TRUNC | O_DIRECT


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def make_keys(tag: str, count: int) -> list[bytes]:
    return [make_offload_key(hashlib.sha256(f"{tag}/{i}".encode()).digest(), 0) for i in range(count)]


# -- the plain loop -------------------------------------------------------------------------------------


def plain_store(path: str, view: memoryview) -> None:
    tmp = f"{path}_{threading.get_ident()}.tmp"
    try:
        fd = os.open(tmp, CREATE, 0o644)
    except FileNotFoundError:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, CREATE, 0o644)
    try:
        if os.write(fd, view) != view.nbytes:
            raise OSError("short write")
    finally:
        os.close(fd)
    Path(tmp).rename(path)


def plain_load(path: str, view: memoryview) -> None:
    fd = os.open(path, os.O_RDONLY | O_DIRECT)
    try:
        if os.preadv(fd, [view], 0) != view.nbytes:
            raise OSError("short read")
    finally:
        os.close(fd)


def run_plain(threads: int, paths: list[str], views: list[memoryview], load: bool) -> float:
    work = plain_load if load else plain_store
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, paths, views))
    return time.perf_counter() - started


# -- the tier -------------------------------------------------------------------------------------------


def run_tier(tier: FileTier, jobs: list[BlockJob], load: bool) -> float:
    """Submit every job at once; seconds until the last one is reported."""
    done = threading.Semaphore(0)
    failed: list[JobResult] = []

    def sink(result: JobResult) -> None:
        if not result.success:
            failed.append(result)
        done.release()

    submit = tier.submit_load if load else tier.submit_store
    started = time.perf_counter()
    for job in jobs:
        submit(job, sink)
    for _ in jobs:
        done.acquire()
    elapsed = time.perf_counter() - started
    if failed:
        raise RuntimeError(f"{len(failed)} jobs failed, e.g. {failed[0].statuses[:4]}")
    return elapsed


@dataclass
class Buffers:
    """The source and destination regions (page-aligned, pre-faulted) and their per-block views."""

    src: mmap.mmap
    dst: mmap.mmap
    src_views: list[memoryview]
    dst_views: list[memoryview]

    @classmethod
    def make(cls, blocks: int, block: int) -> Buffers:
        src, dst = mmap.mmap(-1, blocks * block), mmap.mmap(-1, blocks * block)
        pattern = np.random.default_rng(1).integers(0, 256, block, dtype=np.uint8)
        whole = np.frombuffer(src, np.uint8).reshape(blocks, block)
        whole[:] = pattern
        whole[:, :8] = np.arange(blocks, dtype=np.uint64).view(np.uint8).reshape(blocks, 8)
        np.frombuffer(dst, np.uint8)[:] = 0
        views = [
            (memoryview(src)[i * block : (i + 1) * block], memoryview(dst)[i * block : (i + 1) * block])
            for i in range(blocks)
        ]
        return cls(src, dst, [v[0] for v in views], [v[1] for v in views])

    def check_and_clear(self, label: str) -> None:
        if not np.array_equal(np.frombuffer(self.src, np.uint8), np.frombuffer(self.dst, np.uint8)):
            raise RuntimeError(f"{label}: loaded bytes differ from the stored ones")
        np.frombuffer(self.dst, np.uint8)[:] = 0


def jobs_of(ns: Namespace, keys: list[bytes], views: list[memoryview], per_job: int) -> list[BlockJob]:
    pairs = list(zip(keys, views, strict=True))
    return [BlockJob(i, ns, pairs[i : i + per_job]) for i in range(0, len(pairs), per_job)]


def one_config(root: Path, variant: str, threads: int, bufs: Buffers) -> dict[str, Any]:
    """Store then (after dropping caches) load every block with one variant under `root`."""
    keys = make_keys(root.name, len(bufs.src_views))
    if variant == "plain":
        paths = [namespace_for(root, CONFIG).block_path(k) for k in keys]
        store_s = run_plain(threads, paths, bufs.src_views, load=False)
        cold = drop_caches()
        load_s = run_plain(threads, paths, bufs.dst_views, load=True)
    else:
        reads = math.ceil(threads / 2)
        backlog = 4 * len(bufs.src)
        tier = FileTier(
            root_dir=root, read_threads=reads, write_threads=threads - reads, max_store_backlog_bytes=backlog
        )
        assert tier.direct, "the tier did not get O_DIRECT"
        ns = tier.namespace(CONFIG)
        per_job = int(variant.removeprefix("tier/j"))
        stores = jobs_of(ns, keys, bufs.src_views, per_job)
        loads = jobs_of(ns, keys, bufs.dst_views, per_job)
        store_s = run_tier(tier, stores, load=False)
        cold = drop_caches()
        load_s = run_tier(tier, loads, load=True)
        tier.shutdown(5.0)
    bufs.check_and_clear(f"{variant} T={threads}")
    shutil.rmtree(root)
    gbytes = len(bufs.src) / 1e9
    return {"store_gbps": gbytes / store_s, "load_gbps": gbytes / load_s, "caches_dropped": cold}


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    bufs = Buffers.make(args.blocks, args.block_mib << 20)
    variants = ["plain"] + [f"tier/j{n}" for n in args.job_blocks]
    raw: dict[str, list[dict[str, Any]]] = {}
    for rep in range(args.reps):
        for threads in args.threads:
            shift = rep % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                root = args.dir / f"{variant.replace('/', '-')}-t{threads}-r{rep}"
                raw.setdefault(f"{variant} T={threads}", []).append(one_config(root, variant, threads, bufs))
    return {"raw": raw, "summary": summarize(raw, args.threads)}


def summarize(raw: dict[str, list[dict[str, Any]]], threads: list[int]) -> dict[str, Any]:
    """Median/min/max GB/s per config, and the same-rep ratio to the plain loop at the same T."""
    out: dict[str, Any] = {}
    for name, runs in raw.items():
        plain = raw[f"plain T={name.rsplit('=', 1)[1]}"]
        row: dict[str, Any] = {}
        for op in ("store", "load"):
            row[f"{op}_gbps"] = summary([r[f"{op}_gbps"] for r in runs])
            ratios = [r[f"{op}_gbps"] / p[f"{op}_gbps"] for r, p in zip(runs, plain, strict=True)]
            row[f"{op}_vs_plain"] = summary(ratios)
        out[name] = row
    return out


def print_table(rows: dict[str, Any]) -> None:
    def cell(s: dict[str, float]) -> str:
        return f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"

    print(f"{'config':<16} {'store GB/s':<20} {'vs plain':<20} {'load GB/s':<20} {'vs plain':<20}")
    for name in sorted(rows, key=lambda n: (int(n.rsplit("=", 1)[1]), n)):
        r = rows[name]
        print(
            f"{name:<16} {cell(r['store_gbps']):<20} {cell(r['store_vs_plain']):<20} "
            f"{cell(r['load_gbps']):<20} {cell(r['load_vs_plain']):<20}"
        )


# -- lookups and memory ---------------------------------------------------------------------------------


def lookup_cost(root: Path) -> dict[str, Any]:
    """µs/key for a 10k batch: 50 % known hits, 25 % known misses, 25 % unknown (RETRY, stat queued)."""
    ns = namespace_for(root, CONFIG)
    index = LookupIndex(negative_ttl_s=3600.0, background=False)
    index.add(ns, make_keys("resident", 100_000))
    hits, misses = make_keys("resident", 5000), make_keys("missing", 2500)
    unknown = make_keys("unknown", 2500)
    index.mark_missing(ns, misses)
    batch = [k for group in zip(hits[::2], hits[1::2], misses, unknown, strict=True) for k in group]
    started = time.perf_counter()
    index.lookup(ns, batch)
    first = (time.perf_counter() - started) / len(batch) * 1e6
    repeats = []
    for _ in range(20):
        started = time.perf_counter()
        index.lookup(ns, batch)
        repeats.append((time.perf_counter() - started) / len(batch) * 1e6)
    single = []
    for _ in range(3):
        started = time.perf_counter()
        for k in batch[:2000]:
            index.lookup(ns, (k,))
        single.append((time.perf_counter() - started) / 2000 * 1e6)
    return {
        "batch_10k_first_us_per_key": first,
        "batch_10k_us_per_key": summary(repeats),
        "one_key_per_call_us": summary(single),
        "index_stats": index.stats().__repr__(),
    }


def index_memory() -> dict[str, float]:
    """MiB per million keys: positive set, negative map, and (for scale) a set of the 36-byte keys."""
    ns = namespace_for("/nonexistent", CONFIG)
    keys = make_keys("memory", 1_000_000)
    out: dict[str, float] = {}
    for name in ("positive", "negative", "raw_key_set"):
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        if name == "raw_key_set":
            holder: object = {bytes(bytearray(k)) for k in keys}
        else:
            holder = LookupIndex(
                negative_ttl_s=3600.0, max_keys=2_000_000, max_negative_keys=4_000_000, background=False
            )
            (holder.add if name == "positive" else holder.mark_missing)(ns, keys)
        out[f"{name}_mib_per_million"] = (tracemalloc.get_traced_memory()[0] - before) / 2**20
        tracemalloc.stop()
        del holder
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/tieredkv-agent-io"))
    parser.add_argument("--blocks", type=int, default=512)
    parser.add_argument("--block-mib", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    parser.add_argument("--job-blocks", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16])
    parser.add_argument("--out", type=Path, default=Path("bench/results/agent_io.json"))
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    fs = subprocess.run(["df", "-T", str(args.dir)], capture_output=True, text=True, check=False).stdout
    started = time.monotonic()
    try:
        result: dict[str, Any] = {
            "dir": str(args.dir),
            "df": fs.strip(),
            "blocks": args.blocks,
            "block_bytes": args.block_mib << 20,
            "reps": args.reps,
            "cpus": os.cpu_count(),
            "throughput": throughput(args),
            "lookup": lookup_cost(args.dir),
            "index_memory": index_memory(),
        }
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    result["wall_s"] = time.monotonic() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result["throughput"]["summary"])
    print(json.dumps({"lookup": result["lookup"], "index_memory": result["index_memory"]}, indent=1))
    print(f"wall {result['wall_s']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
