"""Operator latencies on the local control plane: TieredKVCache create → Ready, and pod admission through
the injection webhook at a fixed creation rate, against the same pods without the webhook.

usage: PYTHONPATH=hack .venv/bin/python bench/operator_latency.py [--caches 5] [--pods 250] [--rate 50]
                                                                  [--rounds 5]
writes bench/results/operator_latency.json (or --out)

The pods go in `--rounds` pairs of batches, each pair one batch without the webhook (the pods lack the
opt-in label, so the API server does not call it) then one through it, so that load from other processes
on the machine falls on both alike; `--pods` is the total per kind. The result has the load average
before and after, and the p50/p99 the webhook adds (through minus without).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.k8s helpers

from kubernetes import client, config
from tests.k8s import caches
from tests.k8s.operator_proc import OperatorProcess
from tests.k8s.test_webhook import vllm_pod

from tieredkv_devcluster import controlplane, pki, testing


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary_ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "p50": pct(ms, 0.5), "p99": pct(ms, 0.99), "min": min(ms), "max": max(ms)}


def create_to_ready(api: client.ApiClient, ns: str, count: int) -> list[float]:
    custom, out = client.CustomObjectsApi(api), []
    for i in range(count):
        t0 = time.monotonic()
        custom.create_namespaced_custom_object(
            caches.GROUP, caches.VERSION, ns, caches.PLURAL, caches.manifest(f"c{i}")
        )
        caches.wait_condition(api, ns, f"c{i}", "Ready", "True", timeout=120)
        out.append(time.monotonic() - t0)
    return out


def paced_creates(api: client.ApiClient, ns: str, pods: list[dict[str, Any]], rate: float) -> list[float]:
    """Create `pods` at `rate` per second from a pool of threads; return each create call's latency."""
    core, lat, lock = client.CoreV1Api(api), [], threading.Lock()

    def one(pod: dict[str, Any]) -> None:
        t0 = time.monotonic()
        core.create_namespaced_pod(ns, pod)
        with lock:
            lat.append(time.monotonic() - t0)

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        for i, pod in enumerate(pods):
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
            pool.submit(one, pod)
    return lat


def profile_operator(out: Path) -> None:
    """Load bench/operator_profile/sitecustomize.py into the operator (it inherits this environment)."""
    here = Path(__file__).resolve().parent / "operator_profile"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])
    os.environ["TIEREDKV_BENCH_PROFILE_OUT"] = str(out)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--caches", type=int, default=5)
    parser.add_argument("--pods", type=int, default=250)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--profile", action="store_true", help="record the operator's request, stall and GC times (slower)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/operator_latency.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()
    state = Path(tempfile.mkdtemp(prefix="tieredkv-bench-op-"))
    cluster = controlplane.up(state, log=lambda _m: None)
    kube = testing.TestCluster(kubeconfig=cluster.kubeconfig, layout=cluster.layout)
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    crd = Path(__file__).resolve().parents[1] / "crds" / "tieredkv.io_tieredkvcaches.yaml"
    kube.kubectl("apply", "--server-side", "-f", str(crd))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crd))
    ns = "bench"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": ns}})
    testing.wait_for(
        lambda: client.CoreV1Api(api).read_namespaced_service_account("default", ns).secrets, 30, "SA"
    )
    cert, key = pki.issue_serving_cert(cluster.layout.pki, "bench-webhook", ["127.0.0.1"])
    profile_out = state / "operator-profile.json"
    if args.profile:
        profile_operator(profile_out)
    op = OperatorProcess(
        kube,
        ns,
        state,
        webhook_enabled="true",
        webhook_listen_host="127.0.0.1",
        webhook_public_host="127.0.0.1",
        webhook_port=str(controlplane.free_port()),
        webhook_cert_file=str(cert),
        webhook_key_file=str(key),
        webhook_ca_file=str(cluster.layout.pki / "ca.crt"),
        drift_interval_seconds="15",
    )
    op.start()
    try:
        admission = client.AdmissionregistrationV1Api(api)
        testing.wait_for(lambda: admission.read_mutating_webhook_configuration("tieredkv.io"), 30, "webhook")
        ready = create_to_ready(api, ns, args.caches)
        plain = [vllm_pod(f"plain-{i}") for i in range(args.pods)]
        for p in plain:
            p["metadata"]["labels"].pop("tieredkv.io/inject")
        injected = [vllm_pod(f"inj-{i}") for i in range(args.pods)]
        for p in injected:
            p["metadata"]["annotations"] = {"tieredkv.io/cache": "c0"}
        baseline, webhook, per_round = [], [], []
        size = -(-args.pods // args.rounds)
        for start in range(0, args.pods, size):
            plain_lat = paced_creates(api, ns, plain[start : start + size], args.rate)
            hook_lat = paced_creates(api, ns, injected[start : start + size], args.rate)
            baseline += plain_lat
            webhook += hook_lat
            per_round.append(
                {"without": summary_ms(plain_lat), "through": summary_ms(hook_lat), "load": os.getloadavg()}
            )
        n_injected = sum(
            1
            for p in client.CoreV1Api(api)
            .list_namespaced_pod(ns, label_selector="tieredkv.io/inject=true")
            .items
            if (p.metadata.annotations or {}).get("tieredkv.io/injected") == "c0"
        )
    finally:
        op.stop()
        profile = json.loads(profile_out.read_text()) if profile_out.exists() else None
        controlplane.down(state, log=lambda _m: None)
        controlplane.remove_state(state)
    result = {
        "create_to_ready_s": {
            "n": len(ready),
            "median": statistics.median(ready),
            "min": min(ready),
            "max": max(ready),
        },
        "pod_create_ms_without_webhook": summary_ms(baseline),
        "pod_create_ms_through_injection_webhook": summary_ms(webhook),
        "added_ms": {q: summary_ms(webhook)[q] - summary_ms(baseline)[q] for q in ("p50", "p99")},
        "rounds": per_round,
        "operator_profile_ms": profile,
        "rate_per_s": args.rate,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "pods_injected": n_injected,
        "pods_sent": args.pods,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
