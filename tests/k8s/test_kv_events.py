"""KV events through the cluster: a router-like subscriber finds the agents through the cache's events
Service (its selector and named ports), and after a store-heavy run through both nodes' agents and a GC
pass, the set it rebuilt from the events equals the block files on the volume; the GC leader's pod is
then deleted, its DaemonSet replaces it, and both the subscriber that stayed connected and a new one
(replaying every agent's ring) still equal the files."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
from kubernetes import client

from tests.k8s import caches
from tests.k8s.operator_proc import OperatorProcess
from tests.unit.api_client_worker import BLOCK, profile, region_file, shm_dir, wait_jobs
from tieredkv_agent.api.client import AgentClient
from tieredkv_agent.api.protocol import none_hash_fingerprint
from tieredkv_agent.capacity.lease import lease_name
from tieredkv_agent.events.subscriber import Subscriber
from tieredkv_agent.events.watch import volume_blocks
from tieredkv_agent.store.hashing import HashAlgo, none_hash
from tieredkv_agent.store.naming import KvCacheGroup, RunConfig, make_offload_key, namespace_for
from tieredkv_devcluster import scenario, testing
from tieredkv_devcluster.controlplane import free_port

pytestmark = pytest.mark.k8s

CAPACITY_BLOCKS = 64
BLOCKS_PER_NODE = 192
SLOTS = 16
RUN = RunConfig("org/router-test", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0",)),))
NAMESPACE = namespace_for(Path("/volume"), RUN)


def cache_manifest(ports: list[int]) -> dict[str, Any]:
    return caches.manifest(
        "c",
        vllm={
            "version": "0.33",
            "mode": "agent",
            "cpuBytes": "1Gi",
            "selector": {"matchLabels": {"app": "v"}},
        },
        capacity={"maxBytes": str(CAPACITY_BLOCKS * BLOCK), "highWatermark": 0.9, "lowWatermark": 0.5},
        events={"enabled": True, "port": ports[0], "replayPort": ports[1], "summaryPort": ports[2]},
    )


def agents_behind_service(core: client.CoreV1Api, ns: str) -> dict[str, tuple[str, str]]:
    """Pod name -> (PUB, replay) endpoint of each ready agent behind the events Service.

    What the endpoints controller computes, from the Service itself: its selector and its named target
    ports, resolved on the ready pods it selects. (The simulated nodes give pods loopback addresses, which
    the API server refuses in an Endpoints object, so the test reads the Service and its pods directly.)
    """
    service = core.read_namespaced_service("tieredkv-c-metrics", ns)
    selector = ",".join(f"{k}={v}" for k, v in service.spec.selector.items())
    targets = {p.name: p.target_port for p in service.spec.ports}
    found: dict[str, tuple[str, str]] = {}
    for pod in core.list_namespaced_pod(ns, label_selector=selector).items:
        ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        if not ready or pod.metadata.deletion_timestamp or not pod.status.pod_ip:
            continue
        named = {p.name: p.container_port for c in pod.spec.containers for p in c.ports or []}
        pub, replay = named[targets["kv-events"]], named[targets["kv-replay"]]
        found[pod.metadata.name] = (f"tcp://{pod.status.pod_ip}:{pub}", f"tcp://{pod.status.pod_ip}:{replay}")
    return found


def two_agents(core: client.CoreV1Api, ns: str, without: str | None = None) -> dict[str, tuple[str, str]]:
    """Wait until two ready agents (neither of them the pod `without`) are behind the Service."""

    def ready() -> dict[str, tuple[str, str]] | None:
        found = agents_behind_service(core, ns)
        return found if len(found) == 2 and without not in found else None

    return testing.wait_for(ready, 90, "two ready agents behind the events Service")


def store(sock: Path, fingerprint: str, salt: str) -> None:
    """BLOCKS_PER_NODE fresh blocks through one node's agent, SLOTS per Store job, each one succeeding."""
    short = Path(tempfile.mkdtemp(prefix="tkv-")) / "s"  # AF_UNIX paths are limited to 107 bytes
    short.symlink_to(sock.parent)
    with region_file(SLOTS * BLOCK, shm_dir(tempfile.gettempdir())) as region:
        for slot in range(SLOTS):
            region.fill(slot, os.urandom(BLOCK))
        with AgentClient(
            str(short / sock.name),
            instance_id=f"k8s-test/{salt}",
            vllm_version="0.33.0",
            profile=profile(NAMESPACE.config_dir.name, fingerprint),
            region_fd=region.fd,
            region_bytes=region.size,
            timeout_s=10,
            run_config=json.dumps(NAMESPACE.fields),
        ) as agent:
            for job in range(BLOCKS_PER_NODE // SLOTS):
                keys = [
                    make_offload_key(hashlib.sha256(f"{salt}/{job}/{i}".encode()).digest(), 0)
                    for i in range(SLOTS)
                ]
                agent.submit_store(job + 1, NAMESPACE.config_dir.name, keys, list(range(SLOTS)))
                (done,) = wait_jobs(agent, 1)
                assert done.success, done


def follow(
    subscriber: Subscriber, volume: Path, timeout: float, until: Callable[[], bool] = lambda: True
) -> None:
    """Take messages until `until()` holds and the view equals the files for a quiet second."""
    deadline, quiet = time.monotonic() + timeout, time.monotonic()
    while True:
        if subscriber.poll(100):
            quiet = time.monotonic()
        elif time.monotonic() - quiet > 1 and until() and subscriber.view.blocks == volume_blocks(volume):
            return
        if time.monotonic() > deadline:
            view, disk = subscriber.view.blocks, volume_blocks(volume)
            pytest.fail(
                f"view {len(view)} blocks, disk {len(disk)}: "
                f"{len(disk - view)} missing, {len(view - disk)} extra"
            )


def test_a_subscriber_through_the_events_service_equals_the_volume_after_stores_gc_and_a_leader_restart(
    kube: testing.TestCluster, api: client.ApiClient, ns: str, operator: OperatorProcess
) -> None:
    assert kube.layout is not None, "reads the simulated nodes' directories and the volume"
    core, crd = client.CoreV1Api(api), client.CustomObjectsApi(api)
    ports = [free_port(), free_port(), free_port()]
    crd.create_namespaced_custom_object(
        caches.GROUP, caches.VERSION, ns, caches.PLURAL, cache_manifest(ports)
    )
    cache = caches.wait_condition(api, ns, "c", "Ready", "True", timeout=90)
    volume = scenario.volume_files(kube, ns, cache["status"]["pvcName"])
    assert volume is not None
    seed = base64.b64decode(core.read_namespaced_secret("tieredkv-c-seed", ns).data["seed"]).decode()
    fingerprint = none_hash_fingerprint(none_hash(HashAlgo.SHA256, seed))
    agents = two_agents(core, ns)
    with zmq.Context() as ctx:
        router = Subscriber(ctx, topic_prefix=f"kv@pool:{ns}/c@")
        router.set_agents(agents)
        for node in ("tkv-node-1", "tkv-node-2"):
            sock = (
                kube.layout.nodes / node / "hostpath" / "var" / "run" / "tieredkv" / f"{ns}.c" / "agent.sock"
            )
            testing.wait_for(sock.is_socket, 30, f"the agent socket on {node}")
            store(sock, fingerprint, node)
        follow(router, volume.root, 30)
        assert len(router.view.blocks) == 2 * BLOCKS_PER_NODE, "every store announced, nothing deleted yet"
        old = time.time() - 3600  # past GC's 120 s grace period: the next pass (every 30 s) may delete them
        for path in volume.root.rglob("*.bin"):
            os.utime(path, (old, old))
        follow(
            router, volume.root, 90, until=lambda: len(volume_blocks(volume.root)) <= 0.9 * CAPACITY_BLOCKS
        )
        assert 0 < len(router.view.blocks) <= 0.5 * CAPACITY_BLOCKS

        leader = client.CoordinationV1Api(api).read_namespaced_lease(lease_name("c"), ns).spec.holder_identity
        assert leader in agents
        clears = router.view.clears
        core.delete_namespaced_pod(leader, ns)
        agents = two_agents(core, ns, without=leader)
        router.set_agents(agents)  # a new agent: sync from every ring
        follow(
            router, volume.root, 60, until=lambda: router.view.clears > clears
        )  # the new leader's snapshot
        late = Subscriber(ctx, topic_prefix=f"kv@pool:{ns}/c@")
        late.set_agents(agents)
        assert late.view.blocks == router.view.blocks == volume_blocks(volume.root)
        router.close()
        late.close()
