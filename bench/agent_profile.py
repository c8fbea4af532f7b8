"""Where the agent's CPU goes: py-spy samples a real agent while the plugin stores and loads through it.

usage: .venv/bin/python bench/agent_profile.py [--block-kib 64] [--job-blocks 1] [--run-mib 256]
           [--passes 3] [--py-spy PATH] [--out bench/results/agent_profile_64k_j1.json]

Starts `tieredkv-agent run` (agent mode, as bench/vllm_fs_io.py does) and a bench/fs_client.py plugin
client, then runs `--passes` store + load passes (page cache dropped before each load) while
`py-spy record --format raw --threads` samples the agent (all threads; idle waits are not sampled).
py-spy comes from its PyPI wheel (py_spy), unpacked outside the repository. Reported: the samples per
thread group, the leaf functions with the most samples (self time) and the functions on most stacks
(inclusive time), each as a fraction of all samples, and the agent's CPU seconds per GB.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from plugin_io import SEED, start_agent
from vllm_fs_io import CLIENT, Worker, drop_cache, proc_cpu_s

PY_SPY = Path.home() / ".cache/tieredkv/tools/pyspy/py_spy-0.4.2.data/scripts/py-spy"


def summarize(raw: str, top: int) -> dict[str, Any]:
    """Collapsed stacks ('thread;frame;...;leaf count' lines) -> self/inclusive/thread fractions."""
    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        thread = frames[0].split("(")[0].strip().strip('"')
        threads[thread.rstrip("0123456789-")] += count
        leaf[frames[-1]] += count
        for frame in set(frames[1:]):
            inclusive[frame] += count
    share = lambda c: {k: round(v / max(total, 1), 4) for k, v in c.most_common(top)}  # noqa: E731
    return {"samples": total, "threads": share(threads), "self": share(leaf), "inclusive": share(inclusive)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/tieredkv-agent-profile"))
    parser.add_argument("--block-kib", type=int, default=64)
    parser.add_argument("--job-blocks", type=int, default=1)
    parser.add_argument("--run-mib", type=int, default=256)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--threads", default="4,4", help="the agent's read,write threads")
    parser.add_argument("--target", choices=["agent", "client"], default="agent", help="the process sampled")
    parser.add_argument("--rate", type=int, default=250)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--py-spy", type=Path, default=PY_SPY)
    parser.add_argument("--out", type=Path, default=Path("bench/results/agent_profile.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    (args.dir / "volume").mkdir(parents=True)
    block = args.block_kib << 10
    count = (args.run_mib << 20) // block
    reads, writes = args.threads.split(",")
    threads = {"TIEREDKV_READ_THREADS": reads, "TIEREDKV_WRITE_THREADS": writes}
    agent = start_agent(args.dir / "volume", args.dir / "run", threads)
    env = dict(os.environ, PYTHONHASHSEED=SEED)
    argv = [sys.executable, str(CLIENT), "agent", "--socket", str(args.dir / "run" / "agent.sock")]
    raw_path = args.dir / "stacks.txt"
    record = ["record", "--format", "raw", "--threads", "--nonblocking"]
    spy: subprocess.Popen[bytes] | None = None
    worker: Worker | None = None
    try:
        worker = Worker("agent", [*argv, "--block-bytes", str(block), "--slots", str(count)], env, agent)
        target = agent.pid if args.target == "agent" else int(worker.hello["pid"])
        spy = subprocess.Popen(
            [
                str(args.py_spy),
                *record,
                "--pid",
                str(target),
                "--rate",
                str(args.rate),
                "--output",
                str(raw_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
        cpu, moved, runs = proc_cpu_s(agent.pid), 0, []
        for n in range(args.passes):
            stored = worker.run("store", f"p{n}", count, args.job_blocks)
            drop_cache(args.dir / "volume")
            loaded = worker.run("load", f"p{n}", count, args.job_blocks)
            runs.append({"store": stored, "load": loaded})
            moved += 2 * count * block
        cpu = proc_cpu_s(agent.pid) - cpu
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        if worker is not None:
            worker.close()
        else:
            agent.terminate()
            agent.wait(30)
    raw = raw_path.read_text() if raw_path.exists() else ""
    shutil.rmtree(args.dir, ignore_errors=True)
    result = {
        "block_bytes": block,
        "job_blocks": args.job_blocks,
        "threads": args.threads,
        "target": args.target,
        "blocks_per_pass": count,
        "agent_cpu_s_per_gb": cpu / (moved / 1e9),
        "loadavg": os.getloadavg(),
        "runs": runs,
        "profile": summarize(raw, args.top),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("agent_cpu_s_per_gb", "loadavg")}))
    print(json.dumps(result["profile"], indent=1))


if __name__ == "__main__":
    main()
