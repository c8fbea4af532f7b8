"""GC scan and eviction throughput over many small block files in the real layout, on a real disk.

usage: .venv/bin/python bench/gc_scan.py [--files 200000] [--reps 3] [--threads 1,4] [--dir /var/tmp]
                                         [--evict-fraction 0.1] [--out bench/results/gc_scan.json]
                                         [--tree DIR] [--no-cold]

Creates `--files` block files of 0-4 KiB with random 32-byte hashes, so that they spread over the
4096 `<h[0:3]>` directories and, at 200k files, about one `<h[3:5]>_g0` leaf directory per file, as
real sha256 names do; their mtimes spread over ten days. They go under a fresh directory in `--dir`,
which is refused if it is tmpfs/ramfs: a scan of RAM says nothing about a disk. Then:

* scan: `scan_volume` `--reps` times per thread count, full (every leaf read) and incremental (the
  previous pass's index, nothing changed) -> files/s, median/min/max; warm page cache, and cold too
  (caches dropped, one rep) when this runs as root;
* eviction (warm): `--reps` times, as a GC pass: scan, plan freeing `--evict-fraction` of the remaining
  bytes, walk the leaves the index names (re-stat every block there, unlink the planned ones) -> evicted
  files/s.

* memory: in a child process, one scan from nothing: peak RSS growth (ru_maxrss) and tracemalloc's peak
  and retained bytes, per million files.

The tree is removed at the end, also on failure, unless `--tree DIR` names where to keep it (made there
if it does not exist yet, reused as it is otherwise). The JSON has the load average before and after: the
machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tieredkv_agent.capacity.evict import evict, plan_eviction
from tieredkv_agent.capacity.scan import Cutoffs, scan_volume
from tieredkv_agent.store.naming import block_path, make_offload_key

RAM_FILESYSTEMS = {"tmpfs", "ramfs"}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding `path`, from the longest matching mount point."""
    best, fstype = "", "unknown"
    resolved = str(path.resolve())
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        mount = fields[1].replace("\\040", " ")
        if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, fstype = mount, fields[2]
    return fstype


def create_tree(root: Path, count: int, seed: int, per_leaf: int = 0) -> float:
    """`count` block files under one namespace; returns the creation rate in files/s.

    With `per_leaf`, names share their first three bytes with `per_leaf - 1` others, so a leaf directory
    holds about that many files: the density of a volume `per_leaf` times larger."""
    rng = random.Random(seed)
    stems = [rng.randbytes(3) for _ in range(max(1, count // per_leaf))] if per_leaf else []
    blocks = root / "bench-model_0123456789ab_r0"
    (root / "bench-model_0123456789ab").mkdir()
    (root / "bench-model_0123456789ab" / "config.json").write_text('{"model_name": "bench-model"}')
    now = time.time()
    made: set[str] = set()
    started = time.monotonic()
    for _ in range(count):
        name = rng.choice(stems) + rng.randbytes(29) if stems else rng.randbytes(32)
        path = block_path(blocks, make_offload_key(name, 0))
        leaf = path.rpartition("/")[0]
        if leaf not in made:
            Path(leaf).mkdir(parents=True, exist_ok=True)
            made.add(leaf)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"\0" * rng.randint(0, 4096))
        finally:
            os.close(fd)
        age = rng.uniform(3600, 10 * 86400)
        os.utime(path, (now - age, now - age))
    return count / (time.monotonic() - started)


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_caches() -> bool:
    """Empty the page, dentry and inode caches (root only); False if not permitted."""
    os.sync()
    try:
        DROP_CACHES.write_text("3")
    except OSError:
        return False
    return True


def bench_scan(root: Path, threads: int, reps: int, cold: bool, incremental: bool) -> dict[str, Any]:
    """`full`: every leaf read (a fresh index, as the first pass and every full_scan_every-th);
    `incremental`: the index of the previous pass, nothing changed since (the GC's usual pass)."""
    rates, seconds, files, read = [], [], 0, 0
    index = scan_volume(root, Cutoffs.at(time.time(), 60, 600), threads=threads).index  # warm-up
    for _ in range(reps):
        if cold:
            drop_caches()
        result = scan_volume(
            root, Cutoffs.at(time.time(), 60, 600), threads=threads, index=index if incremental else None
        )
        files, read = result.files, result.leaves_read
        seconds.append(result.duration_s)
        rates.append(result.files / result.duration_s)
    return {
        "threads": threads,
        "cache": "cold" if cold else "warm",
        "scan": "incremental" if incremental else "full",
        "files": files,
        "leaves_read": read,
        "files_per_s": summary(rates),
        "seconds": summary(seconds),
    }


def bench_evict(root: Path, threads: int, reps: int, fraction: float) -> dict[str, Any]:
    """As a GC pass does it: (incremental) scan, plan `fraction` of the bytes, walk the candidate leaves."""
    evicted_rates, seconds, evicted, scan_seconds = [], [], [], []
    index = None
    for _ in range(reps):
        cutoffs = Cutoffs.at(time.time(), 60, 600)
        scan = scan_volume(root, cutoffs, threads=threads, index=index)
        index = scan.index
        scan_seconds.append(scan.duration_s)
        plan = plan_eviction(scan.evictable, int(scan.bytes * fraction), cutoffs.evictable_ns)
        started = time.monotonic()
        leaves = index.candidate_leaves(
            scan.root, min(plan.evictable_ns, (plan.cutoff_bucket + 1) * plan.width_ns - 1)
        )
        result = evict(plan, scan.prefix_dirs, threads=threads, record_limit=0, leaves=leaves)
        index.invalidate(leaves)
        elapsed = time.monotonic() - started
        seconds.append(elapsed)
        evicted.append(result.files)
        evicted_rates.append(result.files / elapsed)
    return {
        "threads": threads,
        "fraction_of_bytes": fraction,
        "evicted_files": evicted,
        "evicted_files_per_s": summary(evicted_rates),
        "seconds": summary(seconds),
        "scan_before_seconds": scan_seconds,
    }


def measure_memory(root: Path) -> dict[str, Any]:
    """One scan from nothing in this (fresh) process: peak RSS growth, then tracemalloc's peak/retained."""
    import tracemalloc

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = scan_volume(root, Cutoffs.at(time.time(), 60, 600), threads=4)
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    del result
    tracemalloc.start()
    result = scan_volume(root, Cutoffs.at(time.time(), 60, 600), threads=4)
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    per_million = 1e6 / max(result.files, 1) / 2**20
    return {
        "files": result.files,
        "rss_peak_growth_mib_per_million_files": rss_peak * per_million,
        "tracemalloc_peak_mib_per_million_files": peak * per_million,
        "tracemalloc_retained_mib_per_million_files": retained * per_million,
    }


def memory_in_child(root: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-of", str(root)], check=True, capture_output=True, text=True
    )
    measured: dict[str, Any] = json.loads(out.stdout)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", default="1,4", help="comma-separated scan thread counts")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--evict-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("bench/results/gc_scan.json"))
    parser.add_argument("--tree", type=Path, default=None, help="keep (and reuse) the tree here")
    parser.add_argument("--files-per-leaf", type=int, default=0, help="leaf density (0: random names)")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-cache scans")
    parser.add_argument("--memory-of", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of is not None:
        print(json.dumps(measure_memory(args.memory_of)))
        return
    load_before = os.getloadavg()
    fstype = filesystem_type(args.tree.parent if args.tree else args.dir)
    if fstype in RAM_FILESYSTEMS:
        sys.exit(f"{args.dir} is {fstype}: pick a directory on a real disk with --dir")
    thread_counts = [int(t) for t in args.threads.split(",")]
    if args.tree is not None:
        root, create_rate = args.tree, None
        if not root.exists():
            root.mkdir(parents=True)
            create_rate = create_tree(root, args.files, args.seed, args.files_per_leaf)
    else:
        root = Path(tempfile.mkdtemp(prefix="tieredkv-bench-gc-", dir=args.dir))
    try:
        if args.tree is None:
            create_rate = create_tree(root, args.files, args.seed, args.files_per_leaf)
        result: dict[str, Any] = {
            "files": args.files,
            "file_sizes": "0-4096 B uniform",
            "files_per_leaf": args.files_per_leaf or "random names",
            "filesystem": fstype,
            "cpus": os.cpu_count(),
            "reps": args.reps,
            "create_files_per_s": create_rate,
            "scan": [
                bench_scan(root, threads, args.reps, cold=False, incremental=incremental)
                for threads in thread_counts
                for incremental in (False, True)
            ],
        }
        result["memory"] = memory_in_child(root)
        if not args.no_cold and drop_caches():
            result["scan"] += [
                bench_scan(root, threads, 1, cold=True, incremental=incremental)
                for threads in thread_counts
                for incremental in (False, True)
            ]
        result["evict"] = bench_evict(root, max(thread_counts), args.reps, args.evict_fraction)
        result["loadavg_before"] = load_before
        result["loadavg_after"] = os.getloadavg()
    finally:
        if args.tree is None:
            shutil.rmtree(root, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
