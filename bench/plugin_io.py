"""The vLLM tier plugin + node agent vs doing the I/O in the vLLM process (issue 5's benchmark).

usage: .venv/bin/python bench/plugin_io.py [--dir /var/tmp/tieredkv-plugin-io] [--blocks 256] [--reps 3]
                                           [--threads 8] [--job-blocks 16] [--out FILE.json]

This process plays vLLM's scheduler process: its CPU region is a 2 MiB-row file in /dev/shm, as vLLM's.
The agent is a separate `tieredkv-agent run` process (agent mode, 4 read + 4 write threads, O_DIRECT on
the volume). Per rep, on fresh keys, in alternating order:
  plugin   TieredKVTier in this process: store jobs of --job-blocks blocks from the region, polled every
           --step-ms (vLLM polls once per scheduler step; a decode step of a real model takes 10-50 ms, so
           the 5 ms default is on the busy side); then, after drop_caches, load jobs of the same blocks.
  inproc   --threads threads in this process, one block per task, writing/reading the region's rows to
           the same vLLM paths with O_DIRECT (tmp + rename on store): what vLLM's fs tier does in-process.
Reported: GB/s both ways, this process's CPU seconds (time.process_time: all its threads) per GB moved,
and the ratios. Then latency: a 1-block load job (submit -> reported, polled every 0.2 ms: a tight loop
would starve the client's reader thread of the GIL) and a 64-key Lookup batch on the plugin's
connection, p50/p99 of 500 each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent_io import drop_caches, plain_load, plain_store, summary
from tieredkv_agent.api.protocol import none_hash_fingerprint
from tieredkv_agent.standin.driver import ReqContext, TransferJob
from tieredkv_agent.standin.engine import block_content, build_tier, engine_spec, prompt, request_keys
from tieredkv_agent.standin.region import SharedRegion
from tieredkv_agent.store.naming import block_path
from tieredkv_agent.vllm import compat

SEED = "31337"


def start_agent(
    volume: Path, sockets: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A `tieredkv-agent run` in agent mode on `volume`; `extra_env` adds settings (threads, LD_PRELOAD)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIEREDKV_")}
    env.update(
        PYTHONHASHSEED=SEED,
        TIEREDKV_MODE="agent",
        TIEREDKV_VLLM_VERSION="0.33",
        TIEREDKV_STORE_DIR=str(volume),
        TIEREDKV_SOCKET_DIR=str(sockets),
        TIEREDKV_METRICS_PORT="0",
        TIEREDKV_GC_SCAN_INTERVAL_SECONDS="3600",
    )
    env.update(extra_env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "tieredkv_agent.cli", "run"], env=env, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 20
    while not (sockets / "agent.sock").is_socket():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the agent did not start")
        time.sleep(0.02)
    return proc


class Plugin:
    """The tier plugin over one region, as vLLM's scheduler drives it."""

    def __init__(self, sockets: Path, region: SharedRegion) -> None:
        entry = {
            "type": "TieredKVTier",
            "module_path": "tieredkv_agent.vllm",
            "socket_path": str(sockets / "agent.sock"),
        }
        self.spec = engine_spec()
        self.tier = build_tier(entry, self.spec, region.view)
        self.ids = iter(range(1, 1 << 62))

    step_s = 0.005

    def run(self, keys: list[bytes], slots: list[int], per_job: int, load: bool) -> tuple[float, float]:
        """(wall s, CPU s of this process) to move every key, in jobs of `per_job`."""
        cpu, started = time.process_time(), time.perf_counter()
        pending: set[int] = set()
        for start in range(0, len(keys), per_job):
            job = TransferJob(
                next(self.ids),
                keys[start : start + per_job],
                slots[start : start + per_job],
                load,
                ReqContext("bench"),
            )
            pending.add(job.job_id)
            (self.tier.submit_load if load else self.tier.submit_store)(job)
        failed = 0
        while pending:
            time.sleep(self.step_s)
            for result in self.tier.get_finished_jobs():
                pending.discard(result.job_id)
                failed += not result.success
        if failed:
            raise RuntimeError(f"{failed} jobs failed")
        return time.perf_counter() - started, time.process_time() - cpu


def inproc(
    root: Path, namespace: str, keys: list[bytes], rows: list[memoryview], *, threads: int, load: bool
) -> tuple[float, float]:
    paths = [block_path(root / f"{namespace}_r0", key) for key in keys]
    cpu, started = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(plain_load if load else plain_store, paths, rows))
    return time.perf_counter() - started, time.process_time() - cpu


def one_rep(args: argparse.Namespace, rep: int, plugin: Plugin, region: SharedRegion) -> dict[str, Any]:
    block = args.block_mib << 20
    gb = args.blocks * block / 1e9
    keys = request_keys(plugin.spec, prompt(rep * 1000 + 1, 16 * args.blocks))
    slots = list(range(args.blocks))
    for slot, key in zip(slots, keys, strict=True):
        region.write(slot, block_content(key, block))
    flat = region.view.cast("B")
    rows = [flat[slot * block : (slot + 1) * block] for slot in slots]
    inproc_root = args.dir / f"inproc-{rep}"
    out: dict[str, Any] = {}
    order = ["plugin", "inproc"] if rep % 2 == 0 else ["inproc", "plugin"]
    for load in (False, True):
        if load:
            drop_caches()
        for variant in order:
            if variant == "plugin":
                wall, cpu = plugin.run(keys, slots, args.job_blocks, load)
            else:
                wall, cpu = inproc(
                    inproc_root, plugin.tier.namespace, keys, rows, threads=args.threads, load=load
                )
            kind = "load" if load else "store"
            out[f"{variant}_{kind}_gbps"] = gb / wall
            out[f"{variant}_{kind}_cpu_s_per_gb"] = cpu / gb
    return out


def latency(plugin: Plugin, region: SharedRegion, n: int) -> dict[str, Any]:
    keys = request_keys(plugin.spec, prompt(999_999, 16 * 64))
    plugin.run(keys, list(range(64)), 64, False)
    load_ms = []
    for i in range(n):
        started = time.perf_counter()
        job = TransferJob(next(plugin.ids), [keys[i % 64]], [i % 64], True, ReqContext("lat"))
        plugin.tier.submit_load(job)
        while not list(plugin.tier.get_finished_jobs()):
            time.sleep(0.0002)
        load_ms.append((time.perf_counter() - started) * 1e3)
    client = plugin.tier.link.client()
    lookup_ms = []
    for _ in range(n):
        started = time.perf_counter()
        client.lookup(plugin.tier.namespace, keys)
        lookup_ms.append((time.perf_counter() - started) * 1e3)

    scheduler_ms, resolved_ms = [], []
    for i in range(n):  # the tier's own path: answered at once, asked in one batch at the step's end
        context = ReqContext(f"lookup-{i}")
        started = time.perf_counter()
        for key in keys:
            plugin.tier.lookup(key, context)
        plugin.tier.on_schedule_end(None)
        scheduler_ms.append((time.perf_counter() - started) * 1e3)
        while plugin.tier.lookup(keys[-1], context) is compat.lookup_answer("RETRY"):
            time.sleep(0.00005)
        resolved_ms.append((time.perf_counter() - started) * 1e3)
        plugin.tier.on_request_finished(context)

    def pct(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {"p50_ms": statistics.median(ordered), "p99_ms": ordered[int(len(ordered) * 0.99) - 1]}

    return {
        "load_1_block": pct(load_ms),
        "lookup_64_keys_round_trip": pct(lookup_ms),
        "tier_lookup_64_keys_scheduler_thread": pct(scheduler_ms),
        "tier_lookup_64_keys_until_answered": pct(resolved_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/tieredkv-plugin-io"))
    parser.add_argument("--blocks", type=int, default=256)
    parser.add_argument("--block-mib", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--job-blocks", type=int, default=16)
    parser.add_argument("--latency-n", type=int, default=500)
    parser.add_argument("--step-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/plugin_io.json"))
    args = parser.parse_args()
    os.environ["PYTHONHASHSEED"] = SEED  # the plugin derives NONE_HASH from it, as vLLM does
    shutil.rmtree(args.dir, ignore_errors=True)
    (args.dir / "volume").mkdir(parents=True)
    agent = start_agent(args.dir / "volume", args.dir / "run")
    region = SharedRegion(f"bench-{os.getpid()}", max(args.blocks, 64), args.block_mib << 20)
    plugin = Plugin(args.dir / "run", region)
    plugin.step_s = args.step_ms / 1e3
    started = time.monotonic()
    try:
        reps = [one_rep(args, rep, plugin, region) for rep in range(args.reps)]
        lat = latency(plugin, region, args.latency_n)
    finally:
        plugin.tier.shutdown()
        region.close()
        agent.terminate()
        agent.wait(20)
        shutil.rmtree(args.dir, ignore_errors=True)
    metrics = {name: summary([rep[name] for rep in reps]) for name in reps[0]}
    ratios = {}
    for kind in ("store", "load"):
        ratios[f"{kind}_throughput_plugin_vs_inproc"] = summary(
            [r[f"plugin_{kind}_gbps"] / r[f"inproc_{kind}_gbps"] for r in reps]
        )
        ratios[f"{kind}_client_cpu_plugin_vs_inproc"] = summary(
            [r[f"plugin_{kind}_cpu_s_per_gb"] / r[f"inproc_{kind}_cpu_s_per_gb"] for r in reps]
        )
    result = {
        "blocks": args.blocks,
        "block_bytes": args.block_mib << 20,
        "reps": args.reps,
        "inproc_threads": args.threads,
        "job_blocks": args.job_blocks,
        "step_ms": args.step_ms,
        "cpus": os.cpu_count(),
        "fingerprint": none_hash_fingerprint(plugin.spec.tieredkv_engine.none_hash),
        "metrics": metrics,
        "ratios": ratios,
        "latency": lat,
        "raw": reps,
        "wall_s": time.monotonic() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"ratios": ratios, "latency": lat, "metrics": metrics}, indent=1))


if __name__ == "__main__":
    main()
