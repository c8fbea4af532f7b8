"""The KV-events publisher with real ZMQ clients: SUB for the live stream, DEALER for replays."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgspec
import pytest
import zmq

from tieredkv_agent.events import (
    Change,
    EventFilter,
    KvEventPublisher,
    PublisherLimits,
    pool_identity,
    topic_for,
)
from tieredkv_agent.events.wire import END_SEQ, AllBlocksCleared, BlockRemoved, BlockStored, decode_batch

pytestmark = pytest.mark.unit

Ctx = zmq.Context[zmq.Socket[bytes]]
Sock = zmq.Socket[bytes]
TOPIC = topic_for(pool_identity("ns", "cache"), "org/model")


@pytest.fixture
def ctx() -> Iterator[Ctx]:
    context: Ctx = zmq.Context()
    yield context
    context.destroy(linger=0)


def publisher(
    limits: PublisherLimits | None = None, event_filter: EventFilter | None = None
) -> KvEventPublisher:
    return KvEventPublisher("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", limits, event_filter)


def subscribe(ctx: Ctx, pub: KvEventPublisher, topic: str = "") -> Sock:
    """A SUB socket whose subscription the publisher has seen (so nothing published later is lost)."""
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVTIMEO, 5000)
    sub.setsockopt(zmq.RCVHWM, 0)
    before = pub.stats().subscriptions
    sub.connect(pub.endpoint)
    sub.setsockopt_string(zmq.SUBSCRIBE, topic)
    wait_for(lambda: pub.stats().subscriptions > before)
    return sub


def wait_for(condition: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def stored(n: int, topic: str = TOPIC) -> Change:
    return Change(topic, False, n.to_bytes(32, "big"), 0, "org_model_0123456789ab")


def removed(n: int, topic: str = TOPIC) -> Change:
    return Change(topic, True, n.to_bytes(32, "big"), 0, "org_model_0123456789ab")


def test_a_subscriber_gets_topic_sequence_and_a_batch_of_tagged_events() -> None:
    with zmq.Context() as ctx:
        pub = publisher()
        try:
            sub = subscribe(ctx, pub)
            pub.publish(stored(1))
            topic, seq, payload = sub.recv_multipart()
            assert topic == TOPIC.encode()
            assert int.from_bytes(seq, "big") == 0
            raw = msgspec.msgpack.decode(payload)
            assert isinstance(raw, list) and len(raw) == 3 and raw[2] == 0  # [ts, events, data_parallel_rank]
            assert raw[1][0]["type"] == "BlockStored"
            assert raw[1][0]["medium"] == "STORAGE"
            event = decode_batch(payload).events[0]
            assert isinstance(event, BlockStored)
            assert event.block_hashes == [(1).to_bytes(32, "big")]
            assert event.parent_block_hash is None and event.token_ids == [] and event.block_size == 0
            sub.close(linger=0)
        finally:
            pub.close()


def test_sequence_numbers_rise_by_one_per_message_and_removals_are_merged(
    ctx: Ctx,
) -> None:
    pub = publisher(PublisherLimits(hwm=0))  # the test reads only after publishing: no high-water mark
    try:
        sub = subscribe(ctx, pub)
        seqs: list[int] = []
        hashes_removed: list[bytes | int] = []
        hashes_stored: list[bytes | int] = []
        for n in range(2000):
            pub.publish(stored(n))
            pub.publish(removed(n))
        while len(hashes_removed) < 2000:
            _, seq, payload = sub.recv_multipart()
            seqs.append(int.from_bytes(seq, "big"))
            for event in decode_batch(payload).events:
                if isinstance(event, BlockRemoved):
                    hashes_removed.extend(event.block_hashes)
                elif isinstance(event, BlockStored):
                    hashes_stored.extend(event.block_hashes)
        assert seqs == list(range(len(seqs)))
        assert hashes_stored == hashes_removed == [n.to_bytes(32, "big") for n in range(2000)]
        wait_for(lambda: pub.stats().published_events == 4000)
    finally:
        pub.close()


def test_each_topic_gets_its_own_messages_and_a_subscriber_can_filter_by_model(
    ctx: Ctx,
) -> None:
    other = topic_for(pool_identity("ns", "cache"), "other/model")
    pub = publisher()
    try:
        sub = subscribe(ctx, pub, topic=other)
        pub.publish(stored(1))
        pub.publish(stored(2, other))
        pub.publish(Change(other, True, b"", 0, None, cleared=True))
        topic, _, payload = sub.recv_multipart()
        assert topic == other.encode()
        events = decode_batch(payload).events
        if len(events) == 1:  # the clear came in a later batch
            _, _, more = sub.recv_multipart()
            events += decode_batch(more).events
        assert isinstance(events[0], BlockStored) and events[0].block_hashes == [(2).to_bytes(32, "big")]
        assert isinstance(events[1], AllBlocksCleared)
    finally:
        pub.close()


def replay(ctx: Ctx, pub: KvEventPublisher, start: int) -> list[tuple[bytes, int, bytes]]:
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.RCVTIMEO, 5000)
    assert pub.replay_endpoint is not None
    dealer.connect(pub.replay_endpoint)
    dealer.send_multipart((b"", start.to_bytes(8, "big")))
    out: list[tuple[bytes, int, bytes]] = []
    while True:
        _, topic, seq, payload = dealer.recv_multipart()
        if seq == END_SEQ:
            dealer.close(linger=0)
            return out
        out.append((topic, int.from_bytes(seq, "big"), payload))


def test_a_late_subscriber_replays_every_kept_batch_from_the_sequence_it_asks_for(
    ctx: Ctx,
) -> None:
    pub = publisher()
    try:
        for n in range(10):
            pub.publish(stored(n))
            wait_for(lambda n=n: pub.stats().published_events == n + 1)
        batches = replay(ctx, pub, 4)
        assert [seq for _, seq, _ in batches] == list(range(4, 10))
        assert all(topic == TOPIC.encode() for topic, _, _ in batches)
        hashes = [h for _, _, p in batches for e in decode_batch(p).events for h in e.block_hashes]  # type: ignore[union-attr]
        assert hashes == [n.to_bytes(32, "big") for n in range(4, 10)]
    finally:
        pub.close()


def test_the_replay_ring_keeps_only_the_newest_batches_within_its_bounds(
    ctx: Ctx,
) -> None:
    pub = publisher(PublisherLimits(replay_max_batches=5, replay_max_bytes=1 << 20))
    try:
        for n in range(12):
            pub.publish(stored(n))
            wait_for(lambda n=n: pub.stats().published_batches == n + 1)
        assert [seq for _, seq, _ in replay(ctx, pub, 0)] == [7, 8, 9, 10, 11]
        stats = pub.stats()
        assert stats.replay_batches == 5 and 0 < stats.replay_bytes < 5 * 200 and stats.replays == 1
    finally:
        pub.close()
    small = publisher(PublisherLimits(replay_max_batches=1000, replay_max_bytes=300))
    try:
        for n in range(12):
            small.publish(stored(n))
        wait_for(lambda: small.stats().published_batches >= 1 and small.stats().queued_events == 0)
        assert small.stats().replay_bytes <= 300
    finally:
        small.close()


def test_a_full_queue_drops_and_counts_instead_of_blocking_the_producer() -> None:
    pub = publisher(PublisherLimits(max_queue_events=10))
    try:
        started = time.monotonic()
        accepted = sum(pub.publish(stored(n)) for n in range(100_000))
        assert time.monotonic() - started < 5.0
        stats = pub.stats()
        assert stats.dropped_events == 100_000 - accepted > 0
    finally:
        pub.close()
    assert not pub.publish(stored(1))  # closed: dropped, never raised


def test_subscriptions_are_counted_and_a_disconnect_takes_its_subscription_away(
    ctx: Ctx,
) -> None:
    pub = publisher()
    try:
        first = subscribe(ctx, pub)
        subscribe(ctx, pub, topic="kv@")
        assert pub.stats().subscriptions == 2
        first.close(linger=0)
        wait_for(lambda: pub.stats().subscriptions == 1)
    finally:
        pub.close()


def test_malformed_replay_requests_are_ignored_and_the_publisher_keeps_serving(
    ctx: Ctx,
) -> None:
    pub = publisher()
    try:
        assert pub.replay_endpoint is not None
        bad = ctx.socket(zmq.DEALER)
        bad.connect(pub.replay_endpoint)
        bad.send_multipart((b"", b"short"))
        bad.send(b"x")
        pub.publish(stored(1))
        wait_for(lambda: pub.stats().published_events == 1)
        assert [seq for _, seq, _ in replay(ctx, pub, 0)] == [0]
        bad.close(linger=0)
    finally:
        pub.close()
