"""Publish latency of the CSI node plugin: what a pod's start waits for its socket volume.

usage: .venv/bin/python bench/csi_publish.py [--pods 200] [--burst 32] [--out bench/results/csi_publish.json]
(root: the plugin makes real bind mounts, under a scratch directory, and removes them)

The real plugin (`tieredkv_agent.csi.server.start_plugin`) serves on Unix sockets; the node simulator's
kubelet side (`tieredkv_devcluster.sim.csi.Kubelet`) registers it through the registration socket, then for
each pod calls NodePublishVolume as a kubelet does at pod start (new pod uid, the volume's directory made
first) and NodeUnpublishVolume at teardown. Reported: registration time, then publish and unpublish round
trips (gRPC + validation + mount(2) + the mount-table check) one pod at a time, and a burst of `--burst`
pods published from as many threads at once (pods starting together on one node).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tieredkv_agent.csi.server import start_plugin
from tieredkv_agent.csi.settings import CsiSettings
from tieredkv_devcluster.sim import csi as kubelet_csi

DRIVER = "socket.tieredkv.io"


def _pod(i: int) -> dict[str, Any]:
    return {"metadata": {"name": f"vllm-{i}", "namespace": "bench", "uid": str(uuid.uuid4())}, "spec": {}}


VOLUME = {
    "name": "tieredkv-socket",
    "csi": {"driver": DRIVER, "readOnly": True, "volumeAttributes": {"cache": "c"}},
}


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3  # noqa: E731
    return {
        "n": len(values),
        "mean_ms": round(statistics.fmean(values) * 1e3, 3),
        "p50_ms": round(pick(0.50), 3),
        "p90_ms": round(pick(0.90), 3),
        "p99_ms": round(pick(0.99), 3),
        "max_ms": round(ordered[-1] * 1e3, 3),
    }


def _timed(fn: Any, *args: Any) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--burst", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("bench/results/csi_publish.json"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tkv-csi-bench-"))
    (root / "kubelet" / "pods").mkdir(parents=True)
    (root / "run" / "bench.c").mkdir(parents=True)
    settings = CsiSettings(
        node_name="bench-node",
        csi_socket=root / "plugin" / "csi.sock",
        csi_endpoint=root / "plugin" / "csi.sock",
        registration_socket=root / "kubelet" / "plugins_registry" / f"{DRIVER}-reg.sock",
        socket_root=root / "run",
        pods_dir=root / "kubelet" / "pods",
    )
    plugin = start_plugin(settings, "bench")
    kubelet = kubelet_csi.Kubelet(
        "bench-node", kubelet_csi.NodePaths(Path), {DRIVER: ["Ephemeral"]}.get, str(root / "kubelet")
    )
    try:
        registration = _timed(kubelet.discover)
        pods = [_pod(i) for i in range(args.pods)]
        publish = [_timed(kubelet.publish, p, VOLUME) for p in pods]
        unpublish = [_timed(kubelet.unpublish, p, VOLUME) for p in pods]
        burst = [_pod(args.pods + i) for i in range(args.burst)]
        with ThreadPoolExecutor(args.burst) as pool:
            started = time.perf_counter()
            burst_each = list(pool.map(lambda p: _timed(kubelet.publish, p, VOLUME), burst))
            burst_all = time.perf_counter() - started
            list(pool.map(lambda p: kubelet.unpublish(p, VOLUME), burst))
    finally:
        kubelet.close()
        plugin.stop(0)
    result = {
        "bench": "csi_publish",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "registration_ms": round(registration * 1e3, 3),
        "publish_one_at_a_time": _ms(publish),
        "unpublish_one_at_a_time": _ms(unpublish),
        "burst": {"pods": args.burst, "all_published_ms": round(burst_all * 1e3, 3), "each": _ms(burst_each)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
