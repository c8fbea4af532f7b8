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

Memory: the process's peak RSS growth over the run, with the replay ring at its default bounds.
"""

from __future__ import annotations

import argparse
import json
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
    ready, stop, seen = threading.Event(), threading.Event(), []
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--latency-probes", type=int, default=2000)
    parser.add_argument("--paced-rate", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/kv_events.json"))
    args = parser.parse_args()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "rate": rate(args.events, args.producers),
        "paced": paced(args.paced_rate, 5.0),
        "latency": latency(args.latency_probes),
    }
    result["peak_rss_growth_mib"] = round(
        (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024, 1
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
