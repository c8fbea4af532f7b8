"""Write bytes saved by store admission on a synthetic long-tail (Zipf) prefix trace.

usage: .venv/bin/python bench/admission_trace.py [--requests 20000] [--prefixes 4000] [--zipf 1.1]
                                                 [--thresholds 0,1,2,3,4] [--trackers 8000,64000,256000]
                                                 [--out bench/results/admission_trace.json]

Trace: each request = one shared prefix drawn from a Zipf(s) distribution over `--prefixes` prefixes
(4..32 blocks each) followed by 1..8 blocks unique to that request. One node sees the requests in
order, as the file tier would:

  1. lookup: the request reports its keys with its request id (`AdmissionFilter.observe`); with
     `observe=all` every key of the request, with `observe=until_miss` only the keys up to and including
     the first one not on the volume (what a plain vLLM prefix scan would ask);
  2. the leading keys already on the volume are loaded (hits);
  3. every key from the first miss on is recomputed and offered to the tier as a store; admitted keys
     (`AdmissionFilter.admit`) are written, the rest skipped.

It runs the real AdmissionFilter against an in-memory set standing for the volume (no file I/O), with
2 MiB blocks for the byte counts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from tieredkv_agent.engine.admission import AdmissionFilter

BLOCK_BYTES = 2 << 20


def make_trace(args: argparse.Namespace) -> list[list[int]]:
    """Per request its block keys: shared prefix keys (>= 0) then keys unique to it (< 0)."""
    rng = np.random.default_rng(args.seed)
    lengths = rng.integers(4, 33, args.prefixes)
    weights = 1.0 / np.arange(1, args.prefixes + 1) ** args.zipf
    picks = rng.choice(args.prefixes, size=args.requests, p=weights / weights.sum())
    suffixes = rng.integers(1, 9, args.requests)
    trace: list[list[int]] = []
    unique = -1
    for prefix, suffix in zip(picks.tolist(), suffixes.tolist(), strict=True):
        keys = [prefix * 64 + j for j in range(int(lengths[prefix]))]
        keys += list(range(unique, unique - suffix, -1))
        unique -= suffix
        trace.append(keys)
    return trace


def replay(trace: list[list[int]], threshold: int, tracker: int, observe: str) -> dict[str, Any]:
    admission = AdmissionFilter(threshold=threshold, max_tracker_size=tracker)
    volume: set[int] = set()
    reads: dict[int, int] = {}
    hits = computed = 0
    for number, keys in enumerate(trace):
        first_miss = next((i for i, key in enumerate(keys) if key not in volume), len(keys))
        asked = keys if observe == "all" else keys[: first_miss + 1]
        admission.observe(f"req-{number}", asked)
        for key in keys[:first_miss]:
            reads[key] += 1
        hits += first_miss
        misses = keys[first_miss:]
        computed += len(misses)
        for key, admitted in zip(misses, admission.admit(misses), strict=True):
            if admitted:
                volume.add(key)
                reads[key] = 0
    stats = admission.stats()
    blocks = sum(len(keys) for keys in trace)
    return {
        "threshold": threshold,
        "tracker_size": tracker,
        "observe": observe,
        "blocks_requested": blocks,
        "blocks_written": len(volume),
        "write_gib": len(volume) * BLOCK_BYTES / 2**30,
        "written_never_read": sum(1 for count in reads.values() if count == 0),
        "hit_blocks": hits,
        "hit_rate": hits / blocks,
        "recomputed_blocks": computed,
        "stores_skipped": stats.denied,
        "tracker_evictions": stats.evicted,
    }


def compare(rows: list[dict[str, Any]]) -> None:
    """Add savings and lost hits relative to admission off (threshold 0) with the same observe mode."""
    baseline = next(row for row in rows if row["threshold"] == 0)
    for row in rows:
        row["write_bytes_saved_pct"] = 100 * (1 - row["blocks_written"] / baseline["blocks_written"])
        row["hits_lost_pct"] = 100 * (1 - row["hit_blocks"] / baseline["hit_blocks"])


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--prefixes", type=int, default=4_000)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--thresholds", type=int_list, default=[0, 1, 2, 3, 4])
    parser.add_argument("--trackers", type=int_list, default=[8_000, 64_000, 256_000])
    parser.add_argument("--out", type=Path, default=Path("bench/results/admission_trace.json"))
    args = parser.parse_args()
    started = time.monotonic()
    trace = make_trace(args)
    rows: list[dict[str, Any]] = []
    for observe in ("all", "until_miss"):
        trackers = args.trackers if observe == "all" else [64_000]
        for tracker in trackers:
            group = [replay(trace, threshold, tracker, observe) for threshold in args.thresholds]
            compare(group)
            rows += group
    distinct_prefix_blocks = len({key for keys in trace for key in keys if key >= 0})
    result = {
        "requests": args.requests,
        "prefixes": args.prefixes,
        "zipf_s": args.zipf,
        "distinct_prefix_blocks": distinct_prefix_blocks,
        "block_bytes": BLOCK_BYTES,
        "rows": rows,
        "wall_s": time.monotonic() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    header = "observe     tracker  thr  written  saved%  never-read  hit-rate  hits-lost%  evictions"
    print(header)
    for r in rows:
        print(
            f"{r['observe']:<10} {r['tracker_size']:>8} {r['threshold']:>4} {r['blocks_written']:>8}"
            f" {r['write_bytes_saved_pct']:>7.1f} {r['written_never_read']:>11} {r['hit_rate']:>9.3f}"
            f" {r['hits_lost_pct']:>11.1f} {r['tracker_evictions']:>10}"
        )


if __name__ == "__main__":
    main()
