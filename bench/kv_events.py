"""The KV-events publisher's sustained rate, end-to-end latency and memory, with a real SUB subscriber.

usage: .venv/bin/python bench/kv_events.py [--events 500000] [--producers 4] [--latency-probes 2000]
                                           [--out bench/results/kv_events.json]

Rate: `--producers` threads (standing for the file tier's I/O threads) publish `--events` BlockStored
changes as fast as they can; the subscriber (same process, its own thread and ZMQ context) decodes every
batch. Sustained rate = events the subscriber decoded / time from the first publish to the last event
received; drops (a full queue) are reported, not hidden.

Latency: one change at a time, the time from `publish` (what a store's I/O thread calls when its file
appears) to the subscriber having decoded it, at rest (p50, p99, max).

Paced: one producer at `--paced-rate` events/s for 5 s: received and dropped.

Memory: the process's peak RSS growth over the run, with the replay ring at its default bounds; and, each
in a fresh process, the RSS growth of a publisher that published `--memory-events` events with its ring
bounded to each of `--ring-mib` (the bound is what keeps it flat).

Store to subscriber (`store_to_event`): real stores through the agent's file tier (its I/O threads link
each block file, then announce it, as in the agent) into a real publisher; the time from a Store job's
submission to the subscriber having decoded the event of its block (p50, p99), next to the store's own
latency (submission to its JobDone), one block per job at rest; then `--store-blocks` blocks stored by
`--store-threads` threads as fast as the file tier takes them, and the events/s the subscriber decoded.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from tieredkv_agent.events import Change, KvEventPublisher, PublisherLimits
from tieredkv_agent.events.wire import decode_batch

TOPIC = "kv@pool:bench/cache@org/model"


def subscriber(endpoint: str, ready: threading.Event, stop: threading.Event, seen: list[Any]) -> None:
    """Decode every batch; append (events in it, monotonic time received)."""
    with zmq.Context() as ctx:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.connect(endpoint)
        sub.setsockopt_string(zmq.SUBSCRIBE, "")
        ready.set()
        while not stop.is_set():
            if sub.poll(50):
                _, _, payload = sub.recv_multipart()
                seen.append((len(decode_batch(payload).events), time.monotonic()))
        sub.close(linger=0)


def start(limits: PublisherLimits) -> tuple[KvEventPublisher, threading.Event, list[Any], threading.Thread]:
    pub = KvEventPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", limits)
    ready, stop = threading.Event(), threading.Event()
    seen: list[Any] = []
    thread = threading.Thread(target=subscriber, args=(pub.endpoint, ready, stop, seen))
    thread.start()
    ready.wait()
    while pub.stats().subscriptions == 0:
        time.sleep(0.01)
    return pub, stop, seen, thread


def rate(events: int, producers: int) -> dict[str, Any]:
    pub, stop, seen, thread = start(PublisherLimits())
    per = events // producers

    def produce(offset: int) -> None:
        for n in range(offset, offset + per):
            pub.publish(Change(TOPIC, False, n.to_bytes(32, "big"), 0, "org_model_0123456789ab"))

    started = time.monotonic()
    workers = [threading.Thread(target=produce, args=(i * per,)) for i in range(producers)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    publish_s = time.monotonic() - started
    stats = pub.stats()
    deadline = time.monotonic() + 60
    while (
        sum(n for n, _ in seen) < stats.published_events + pub.stats().queued_events
        and time.monotonic() < deadline
    ):
        time.sleep(0.01)
        stats = pub.stats()
    received = sum(n for n, _ in seen)
    elapsed = seen[-1][1] - started if seen else float("nan")
    stop.set()
    thread.join()
    final = pub.stats()
    pub.close()
    return {
        "events": per * producers,
        "producers": producers,
        "received": received,
        "dropped": final.dropped_events,
        "batches": final.published_batches,
        "publish_calls_per_s": round(per * producers / publish_s),
        "sustained_events_per_s": round(received / elapsed),
        "replay_ring_bytes": final.replay_bytes,
        "replay_ring_batches": final.replay_batches,
    }


def paced(events_per_s: int, seconds: float) -> dict[str, Any]:
    """One producer at a fixed rate (in 1 ms steps): does the publisher keep up without a drop?"""
    pub, stop, seen, thread = start(PublisherLimits())
    started = time.monotonic()
    sent = 0
    while (now := time.monotonic()) - started < seconds:
        due = int((now - started) * events_per_s)
        for n in range(sent, due):
            pub.publish(Change(TOPIC, False, n.to_bytes(32, "big"), 0, None))
        sent = due
        time.sleep(0.001)
    deadline = time.monotonic() + 30
    while sum(n for n, _ in seen) < sent - pub.stats().dropped_events and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join()
    final = pub.stats()
    pub.close()
    return {
        "rate": events_per_s,
        "sent": sent,
        "received": sum(n for n, _ in seen),
        "dropped": final.dropped_events,
    }


def latency(probes: int) -> dict[str, Any]:
    pub, stop, seen, thread = start(PublisherLimits())
    samples = []
    for n in range(probes):
        before = len(seen)
        sent = time.monotonic()
        pub.publish(Change(TOPIC, False, n.to_bytes(32, "big"), 0, None))
        while len(seen) == before:
            time.sleep(0)
        samples.append(seen[-1][1] - sent)
    stop.set()
    thread.join()
    pub.close()
    samples.sort()
    ms = [s * 1000 for s in samples]
    return {
        "probes": probes,
        "p50_ms": round(ms[len(ms) // 2], 3),
        "p99_ms": round(ms[int(len(ms) * 0.99)], 3),
        "max_ms": round(ms[-1], 3),
    }


def store_to_event(probes: int, blocks: int, threads: int) -> dict[str, Any]:
    """Stores through a FileTier whose block files are announced by BlockEvents into a publisher."""
    import hashlib
    import mmap
    import tempfile

    from tieredkv_agent.engine.jobs import BlockJob, CompletionQueue
    from tieredkv_agent.events import BlockEvents
    from tieredkv_agent.store.naming import KvCacheGroup, RunConfig, make_offload_key
    from tieredkv_agent.tiers.file import FileTier

    block = 4096
    pub, stop, seen, thread = start(PublisherLimits())
    events = BlockEvents(pub, "pool:bench/cache")
    with tempfile.TemporaryDirectory(prefix="tkv-bench-events-") as root:
        tier = FileTier(root_dir=Path(root), on_block_file=events.block_file, write_threads=threads)
        namespace = tier.namespace(RunConfig("org/model", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0",)),)))
        source = memoryview(mmap.mmap(-1, block))

        def key(n: int) -> bytes:
            return make_offload_key(hashlib.sha256(str(n).encode()).digest(), 0)

        done = CompletionQueue()
        e2e, store_s = [], []
        for n in range(probes):
            before = len(seen)
            sent = time.monotonic()
            tier.submit_store(BlockJob(n, namespace, [(key(n), source)]), done)
            assert done.get(10.0) is not None
            stored = time.monotonic()
            while len(seen) == before:
                time.sleep(0)
            e2e.append(seen[-1][1] - sent)
            store_s.append(stored - sent)
        received_before = sum(n for n, _ in seen)
        started = time.monotonic()
        jobs = 64
        per_job = blocks // jobs
        big = memoryview(mmap.mmap(-1, block))
        for j in range(jobs):
            keys = [key(probes + j * per_job + i) for i in range(per_job)]
            tier.submit_store(BlockJob(probes + j, namespace, [(k, big) for k in keys]), done)
        for _ in range(jobs):
            assert done.get(120.0) is not None
        deadline = time.monotonic() + 30
        while sum(n for n, _ in seen) - received_before < jobs * per_job and time.monotonic() < deadline:
            time.sleep(0.01)
        elapsed = seen[-1][1] - started
        tier.shutdown(5.0)
    stop.set()
    thread.join()
    final = pub.stats()
    pub.close()
    return {
        "probes": probes,
        "store_to_event": _percentiles(e2e),
        "store_alone": _percentiles(store_s),
        "burst_blocks": jobs * per_job,
        "burst_write_threads": threads,
        "burst_events_received": sum(n for n, _ in seen) - received_before,
        "burst_events_per_s": round((sum(n for n, _ in seen) - received_before) / elapsed),
        "dropped": final.dropped_events,
    }


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "p50_ms": round(ms[len(ms) // 2], 3),
        "p99_ms": round(ms[int(len(ms) * 0.99)], 3),
        "max_ms": round(ms[-1], 3),
    }


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def ring_memory(ring_mib: int, events: int) -> dict[str, Any]:
    """In a fresh process: RSS growth of a publisher (no subscriber) after `events` events with its ring
    bounded to `ring_mib` MiB (and far more batches than that holds)."""
    before = _rss_kib()
    limits = PublisherLimits(replay_max_bytes=ring_mib << 20, replay_max_batches=1_000_000)
    pub = KvEventPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", limits)
    for n in range(events):
        while not pub.publish(Change(TOPIC, False, n.to_bytes(32, "big"), 0, "org_model_0123456789ab")):
            time.sleep(0.001)  # a full queue: wait (memory, not the drop policy, is measured here)
    while pub.stats().queued_events:
        time.sleep(0.01)
    stats = pub.stats()
    grown = _rss_kib() - before
    pub.close()
    return {
        "ring_bound_mib": ring_mib,
        "events": events,
        "ring_bytes": stats.replay_bytes,
        "ring_batches": stats.replay_batches,
        "rss_growth_mib": round(grown / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--latency-probes", type=int, default=2000)
    parser.add_argument("--paced-rate", type=int, default=50_000)
    parser.add_argument("--store-probes", type=int, default=1000)
    parser.add_argument("--store-blocks", type=int, default=64_000)
    parser.add_argument("--store-threads", type=int, default=4)
    parser.add_argument("--memory-events", type=int, default=1_000_000)
    parser.add_argument("--ring-mib", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--out", type=Path, default=Path("bench/results/kv_events.json"))
    args = parser.parse_args()
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(1, maxtasksperchild=1) as pool:
        memory = [pool.apply(ring_memory, (mib, args.memory_events)) for mib in args.ring_mib]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result: dict[str, Any] = {
        "rate": rate(args.events, args.producers),
        "paced": paced(args.paced_rate, 5.0),
        "latency": latency(args.latency_probes),
    }
    result["peak_rss_growth_mib"] = round(
        (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024, 1
    )
    result["store"] = store_to_event(args.store_probes, args.store_blocks, args.store_threads)
    result["ring_memory"] = memory
    result["machine"] = {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
