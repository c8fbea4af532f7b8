"""Command line of the dev cluster: `up`, `down`, `status` (used by the Makefile) and `sim` (internal)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from tieredkv_devcluster import controlplane, paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tieredkv_devcluster", description=__doc__)
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="default: $TIEREDKV_CLUSTER_DIR or .cluster/"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the local control plane (idempotent)")
    up.add_argument("--nodes", type=int, default=2, help="simulated nodes (default 2)")
    sub.add_parser("down", help="stop every process the cluster started, by recorded PID")
    sub.add_parser("status", help="print the cluster's state as JSON")
    demo_parser = sub.add_parser("demo", help="bring the cluster up, install tieredkv, run the quickstart")
    demo_parser.add_argument(
        "--scenario", default="share", help="share (default), native, standin, seed-mismatch or events"
    )
    sim = sub.add_parser("sim", help="(internal) run the node simulator")
    sim.add_argument("--nodes", type=int, default=2)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    state_dir = args.state_dir or paths.default_state_dir()
    if args.command == "up":
        cluster = controlplane.up(state_dir, nodes=args.nodes)
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        return 0
    if args.command == "down":
        controlplane.down(state_dir)
        return 0
    if args.command == "status":
        info = controlplane.status(state_dir)
        print(json.dumps(info, indent=2))
        return 0 if info["running"] else 1
    if args.command == "demo":
        from tieredkv_devcluster import demo

        return demo.run(state_dir, args.scenario)
    from tieredkv_devcluster.sim.main import run

    return run(state_dir, args.nodes)
