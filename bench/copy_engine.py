"""Copy engine and RAM tier: block gathers vs one large copy, RAM-tier loads vs file loads, GPU copies.

usage: .venv/bin/python bench/copy_engine.py [--blocks 256] [--block-mib 2] [--reps 5] [--threads 1,2]
                                             [--api-blocks 64] [--job-blocks 16] [--dir /var/tmp]
                                             [--out bench/results/copy_engine.json]

Same run, rotating order per rep:

* cpu: `--blocks` blocks in plain host memory. `gather` copies them from a random order of the source into
  the destination in order, `scatter` the other way round, both as one engine batch (one block per run, so
  nothing merges); `one_copy` is a single `dst.copy_(src)` of the same bytes. Ratio = engine GB/s over
  one_copy GB/s of the same rep (goal >= 0.8).
* api: an AgentServer on a LayeredTier (RAM pool over a file tier) and one on a plain FileTier over the same
  volume directory. Instance A stores `--api-blocks` blocks through the first; instance B, connected to both
  (its region in /dev/shm, mapped once per connection and warmed by one unmeasured load), then loads them in
  jobs of `--job-blocks` through each socket, timed from the first Load to the last JobDone. File loads
  run after dropping the page cache when permitted (the file tier uses O_DIRECT where the volume takes it).
* gpu (CUDA only): device -> pinned and pinned -> device of `--blocks` blocks in random order through the
  engine vs one large `copy_` (one cudaMemcpyAsync) of the same bytes; also pageable host memory, staged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tieredkv_agent.api.client import AgentClient
from tieredkv_agent.api.protocol import CompatProfile, none_hash_fingerprint
from tieredkv_agent.api.server import AgentServer
from tieredkv_agent.copy.engine import CopyEngine
from tieredkv_agent.copy.spaces import BlockSpace
from tieredkv_agent.store.naming import KvCacheGroup, RunConfig, make_offload_key
from tieredkv_agent.tiers.file import FileTier
from tieredkv_agent.tiers.layered import LayeredTier
from tieredkv_agent.tiers.ram import RamPool

CONFIG = RunConfig("bench/model", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0",)),))
FINGERPRINT = none_hash_fingerprint(b"\x02" * 32)


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def timed(action: Callable[[], None], synchronize: Callable[[], None] = lambda: None) -> float:
    synchronize()
    started = time.perf_counter()
    action()
    synchronize()
    return time.perf_counter() - started


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


# -- cpu ------------------------------------------------------------------------------------------------


def cpu_copies(args: argparse.Namespace) -> dict[str, Any]:
    block_bytes, blocks = args.block_mib << 20, args.blocks
    src = BlockSpace.allocate(blocks, block_bytes, pin=False)
    dst = BlockSpace.allocate(blocks, block_bytes, pin=False)
    src.flat(0, blocks).fill_(1)
    dst.flat(0, blocks).fill_(2)
    order = random.Random(1).sample(range(blocks), blocks)
    ordered = list(range(blocks))
    nbytes = blocks * block_bytes
    rates: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    engines = {threads: CopyEngine(cpu_threads=threads) for threads in args.threads}
    cases: dict[str, Callable[[], None]] = {
        "one_copy": lambda: dst.flat(0, blocks).copy_(src.flat(0, blocks))
    }
    for threads, engine in engines.items():
        cases[f"gather/t{threads}"] = lambda e=engine: e.copy(src, order, dst, ordered)
        cases[f"scatter/t{threads}"] = lambda e=engine: e.copy(src, ordered, dst, order)
    try:
        for case in cases.values():
            case()  # warm-up: page faults, threads
        for rep in range(args.reps):
            names = list(cases)
            names = names[rep % len(names) :] + names[: rep % len(names)]
            seconds = {name: timed(cases[name]) for name in names}
            for name, took in seconds.items():
                rates.setdefault(name, []).append(nbytes / took / 1e9)
                if name != "one_copy":
                    ratios.setdefault(name, []).append(seconds["one_copy"] / took)
    finally:
        for engine in engines.values():
            engine.close()
    return {
        "bytes": nbytes,
        "gb_per_s": {name: summary(values) for name, values in rates.items()},
        "ratio_vs_one_copy": {name: summary(values) for name, values in ratios.items()},
    }


# -- socket API: RAM tier vs files ----------------------------------------------------------------------


class _Region:
    def __init__(self, directory: str, size: int) -> None:
        self.fd, self.path = tempfile.mkstemp(prefix="tkv-bench-", dir=directory)
        os.ftruncate(self.fd, size)
        self.size = size

    def close(self) -> None:
        os.close(self.fd)
        Path(self.path).unlink()


def _client(server: AgentServer, region: _Region, name: str, block_bytes: int, who: str) -> AgentClient:
    profile = CompatProfile(
        namespace=name, block_bytes=block_bytes, hash_algo="sha256", none_hash_fingerprint=FINGERPRINT
    )
    return AgentClient(
        server.socket_path,
        instance_id=who,
        vllm_version="0.33.0",
        profile=profile,
        region_fd=region.fd,
        region_bytes=region.size,
        timeout_s=60.0,
    )


def _run_jobs(client: AgentClient, name: str, keys: list[bytes], job_blocks: int, store: bool) -> float:
    """Submit every key in jobs of `job_blocks`, wait for all JobDones; seconds taken."""
    started = time.perf_counter()
    jobs = 0
    for first in range(0, len(keys), job_blocks):
        chunk = keys[first : first + job_blocks]
        slots = list(range(first, first + len(chunk)))
        (client.submit_store if store else client.submit_load)(first + 1, name, chunk, slots)
        jobs += 1
    done: list[Any] = []
    deadline = time.monotonic() + 120
    while len(done) < jobs and time.monotonic() < deadline:
        done += client.poll()
        time.sleep(0.0005)
    took = time.perf_counter() - started
    if len(done) < jobs or not all(job.success for job in done):
        raise RuntimeError(f"{'store' if store else 'load'} jobs failed or timed out: {done}")
    return took


def api_loads(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    block_bytes, count = args.block_mib << 20, args.api_blocks
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else str(workdir)
    volume = workdir / "volume"
    layered = LayeredTier(ram=RamPool(count * block_bytes), lower=FileTier(root_dir=volume))
    plain = FileTier(root_dir=volume)
    servers = {
        "ram": AgentServer(
            workdir / "ram.sock", layered, agent_version="bench", expected_fingerprint=FINGERPRINT
        ),
        "file": AgentServer(
            workdir / "file.sock", plain, agent_version="bench", expected_fingerprint=FINGERPRINT
        ),
    }
    name = layered.namespace(CONFIG).config_dir.name
    keys = [make_offload_key(hashlib.sha256(f"api/{i}".encode()).digest(), 0) for i in range(count)]
    region_a, region_b = _Region(shm, count * block_bytes), _Region(shm, count * block_bytes)
    rates: dict[str, list[float]] = {"ram": [], "file": []}
    try:
        with os.fdopen(os.dup(region_a.fd), "r+b") as out:
            out.write(random.Random(3).randbytes(count * block_bytes))
        with _client(servers["ram"], region_a, name, block_bytes, "bench/a") as writer:
            store_s = _run_jobs(writer, name, keys, args.job_blocks, store=True)
        readers = {
            tier: _client(servers[tier], region_b, name, block_bytes, f"bench/b-{tier}") for tier in servers
        }
        dropped = False
        try:
            for reader in readers.values():  # warm-up: the agent maps and first touches the region
                _run_jobs(reader, name, keys, args.job_blocks, store=False)
            for rep in range(args.reps):
                for tier in ("ram", "file") if rep % 2 == 0 else ("file", "ram"):
                    if tier == "file":
                        dropped = drop_caches()
                    took = _run_jobs(readers[tier], name, keys, args.job_blocks, store=False)
                    rates[tier].append(count * block_bytes / took / 1e9)
        finally:
            for reader in readers.values():
                reader.close()
        ram_stats = layered.stats().ram
    finally:
        for server in servers.values():
            server.close()
        layered.shutdown(5.0)
        plain.shutdown(5.0)
        region_a.close()
        region_b.close()
    ratios = [ram / file for ram, file in zip(rates["ram"], rates["file"], strict=True)]
    return {
        "blocks": count,
        "job_blocks": args.job_blocks,
        "regions_in": shm,
        "volume_o_direct": plain.direct,
        "page_cache_dropped_before_file_loads": dropped,
        "store_gb_per_s_write_through": count * block_bytes / store_s / 1e9,
        "load_gb_per_s": {tier: summary(values) for tier, values in rates.items()},
        "ram_over_file": summary(ratios),
        "ram_load_hits": ram_stats.load_hits,
    }


# -- gpu ------------------------------------------------------------------------------------------------


def gpu_copies(args: argparse.Namespace) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA on this machine"}
    block_bytes, blocks = args.block_mib << 20, args.blocks
    device = BlockSpace.of_tensor(
        torch.empty(blocks * block_bytes, dtype=torch.uint8, device="cuda"), block_bytes
    )
    pinned = BlockSpace.allocate(blocks, block_bytes, pin=True)
    pageable = BlockSpace.allocate(blocks, block_bytes, pin=False)
    order, ordered = random.Random(2).sample(range(blocks), blocks), list(range(blocks))
    engine = CopyEngine()
    sync = torch.cuda.synchronize
    cases: dict[str, Callable[[], None]] = {
        "one_copy/d2h": lambda: pinned.flat(0, blocks).copy_(device.flat(0, blocks), non_blocking=True),
        "one_copy/h2d": lambda: device.flat(0, blocks).copy_(pinned.flat(0, blocks), non_blocking=True),
        "engine/d2h": lambda: engine.copy(device, order, pinned, ordered),
        "engine/h2d": lambda: engine.copy(pinned, ordered, device, order),
        "engine/d2h_pageable": lambda: engine.copy(device, order, pageable, ordered),
        "engine/h2d_pageable": lambda: engine.copy(pageable, ordered, device, order),
    }
    rates: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    try:
        for case in cases.values():
            case()
            sync()
        for _ in range(args.reps):
            seconds = {name: timed(case, sync) for name, case in cases.items()}
            for name, took in seconds.items():
                rates.setdefault(name, []).append(blocks * block_bytes / took / 1e9)
            for direction in ("d2h", "h2d"):
                ratios.setdefault(direction, []).append(
                    seconds[f"one_copy/{direction}"] / seconds[f"engine/{direction}"]
                )
    finally:
        engine.close()
    return {
        "device": torch.cuda.get_device_name(0),
        "gb_per_s": {name: summary(values) for name, values in rates.items()},
        "engine_over_one_copy": {name: summary(values) for name, values in ratios.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=256)
    parser.add_argument("--block-mib", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--api-blocks", type=int, default=64)
    parser.add_argument("--job-blocks", type=int, default=16)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/copy_engine.json"))
    args = parser.parse_args()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="tieredkv-copy-bench-", dir=args.dir))
    try:
        result: dict[str, Any] = {
            "block_bytes": args.block_mib << 20,
            "blocks": args.blocks,
            "reps": args.reps,
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu": cpu_copies(args),
            "api": api_loads(args, workdir),
            "gpu": gpu_copies(args),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["wall_s"] = time.monotonic() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    brief = {part: {k: v for k, v in result[part].items() if k != "bytes"} for part in ("cpu", "api", "gpu")}
    print(json.dumps(brief, indent=1))
    print(f"wall {result['wall_s']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
