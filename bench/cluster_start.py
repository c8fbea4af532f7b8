"""Warm start time, stop time and memory of the local control plane (binaries already built).

usage: PYTHONPATH=hack .venv/bin/python bench/cluster_start.py [--reps 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tieredkv_devcluster import controlplane


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cluster_start.json"))
    args = parser.parse_args()
    starts, stops, rss_total = [], [], []
    rss_by: dict[str, list[float]] = {}
    for _ in range(args.reps):
        state = Path(tempfile.mkdtemp(prefix="tieredkv-bench-cluster-"))
        controlplane.up(state, log=lambda _m: None)  # first start pays PKI generation: not counted
        controlplane.down(state, log=lambda _m: None)
        t0 = time.monotonic()
        cluster = controlplane.up(state, log=lambda _m: None)
        starts.append(time.monotonic() - t0)
        time.sleep(5)  # let controllers settle before reading memory
        rss = cluster.rss_bytes()
        for name, value in rss.items():
            rss_by.setdefault(name, []).append(value / 2**20)
        rss_total.append(sum(rss.values()) / 2**20)
        t0 = time.monotonic()
        controlplane.down(state, log=lambda _m: None)
        stops.append(time.monotonic() - t0)
        controlplane.remove_state(state)
    result: dict[str, Any] = {
        "reps": args.reps,
        "warm_start_s": summary(starts),
        "stop_s": summary(stops),
        "rss_total_mib": summary(rss_total),
        "rss_mib": {k: summary(v) for k, v in rss_by.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
