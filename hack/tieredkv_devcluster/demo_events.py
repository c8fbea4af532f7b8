"""`make demo SCENARIO=events`: the stand-in scenario with KV events on and a cache small enough for GC to
delete, then a router's view of the shared cache, built only from the agents' events, next to the block
files on the volume: equal before GC, and equal again after a GC pass deleted blocks.

The subscriber is `tieredkv_agent.events.subscriber.Subscriber`, what a router does: one SUB socket per
agent behind the cache's events Service, every agent's replay ring merged by timestamp, then the live
stream. The standin engines store fresh blocks, which GC's grace period (120 s) protects; to show a GC pass
without waiting two minutes, the demo ages the block files by an hour and says so.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import zmq

from tieredkv_agent.events.subscriber import Subscriber
from tieredkv_agent.events.watch import volume_blocks
from tieredkv_devcluster import scenario, testing

CAPACITY = "8Mi"
"""The quickstart stores 192 blocks of 64 KiB (12 MiB): GC keeps 80% of 8 MiB, about 100 of them."""


def cache_overrides(docs: list[dict[str, Any]]) -> None:
    """Turn the quickstart cache into the events demo's: events on, a small capacity."""
    for doc in docs:
        if doc["kind"] == "TieredKVCache":
            doc["spec"]["events"] = {"enabled": True}
            doc["spec"]["capacity"] = {"maxBytes": CAPACITY}


def agents(kube: testing.TestCluster, namespace: str, cache: str) -> dict[str, tuple[str, str]]:
    """Pod -> (PUB, replay) endpoint of each ready agent selected by the cache's events Service."""
    service = json.loads(
        kube.kubectl("get", "service", "-n", namespace, f"tieredkv-{cache}-metrics", "-o", "json")
    )
    selector = ",".join(f"{k}={v}" for k, v in service["spec"]["selector"].items())
    targets = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
    found = {}
    for pod in scenario.pods(kube, namespace, selector):
        ip = pod.get("status", {}).get("podIP")
        conditions = pod.get("status", {}).get("conditions") or []
        if not ip or not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            continue
        named = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        pub, replay = named[targets["kv-events"]], named[targets["kv-replay"]]
        found[pod["metadata"]["name"]] = (f"tcp://{ip}:{pub}", f"tcp://{ip}:{replay}")
    return found


def show(kube: testing.TestCluster, namespace: str, cache: str, gc_pass: Any) -> bool:
    """The view next to the files, before and after a GC pass; True when both were equal.

    `gc_pass(since)` waits for the GC leader's next pass after `since` (demo._after_gc_pass).
    """
    claim = json.loads(kube.kubectl("get", "tkv", "-n", namespace, cache, "-o", "json"))["status"]["pvcName"]
    volume = scenario.volume_files(kube, namespace, claim)
    if volume is None:
        print("(no local volume to compare with: the events demo needs the local control plane)")
        return False
    found = agents(kube, namespace, cache)
    with zmq.Context() as ctx:
        router = Subscriber(ctx, topic_prefix=f"kv@pool:{namespace}/{cache}@")
        try:
            router.set_agents(found)  # a late subscriber: everything comes from the agents' rings
            before = _settle(router, volume.root)
            print(f"\n──── KV events: a router's view of {namespace}/{cache} ─────────────────────────")
            print(f"agents:   {', '.join(f'{pod} {ends[0]}' for pod, ends in sorted(found.items()))}")
            _line("after the engines' stores", router, volume.root, before)
            old = time.time() - 3600
            for path in volume.root.rglob("*.bin"):
                os.utime(path, (old, old))
            print("          (the block files aged by an hour, past GC's 120 s grace period)")
            gc_pass(time.time())
            after = _settle(router, volume.root)
            _line("after a GC pass", router, volume.root, after)
            return before and after
        finally:
            router.close()


def _settle(router: Subscriber, root: Any, timeout: float = 20) -> bool:
    """Follow until the view equals the files for a quiet second; whether it did."""
    deadline, quiet = time.monotonic() + timeout, time.monotonic()
    while time.monotonic() < deadline:
        if router.poll(100):
            quiet = time.monotonic()
        elif time.monotonic() - quiet > 1 and router.view.blocks == volume_blocks(root):
            return True
    return False


def _line(when: str, router: Subscriber, root: Any, equal: bool) -> None:
    view, disk = router.view.blocks, volume_blocks(root)
    verdict = "equal" if equal else f"DIFFERENT: {len(disk - view)} missing, {len(view - disk)} extra"
    print(
        f"{when + ':':27s} view {len(view):4d} blocks | files on the volume {len(disk):4d} | {verdict} "
        f"({router.view.messages} messages, {router.view.clears} AllBlocksCleared)"
    )
