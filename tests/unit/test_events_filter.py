"""`spec.events.filter`: the cache's choice of kinds, models and KV-cache groups reaches the agents'
settings, and their publisher sends, keeps for replay and counts exactly what it admits."""

from __future__ import annotations

from typing import Any

import pytest
import zmq
from pydantic import ValidationError

from tests.unit.agent_process import free_port
from tests.unit.test_events_publisher import publisher, removed, stored, subscribe, wait_for
from tieredkv_agent.config import AgentSettings
from tieredkv_agent.events import Change, EventFilter, block_events, pool_identity, topic_for
from tieredkv_agent.events.wire import END_SEQ, decode_batch
from tieredkv_operator.names import CacheRef
from tieredkv_operator.resources import agents
from tieredkv_operator.spec import TieredKVCacheSpec

pytestmark = pytest.mark.unit

CACHE = CacheRef("shared", "team", "uid-1", 1)
IDENTITY = pool_identity("ns", "cache")
WANTED = topic_for(IDENTITY, "org/model")
OTHER = topic_for(IDENTITY, "org/other")


def spec(**events: Any) -> TieredKVCacheSpec:
    return TieredKVCacheSpec.model_validate(
        {
            "storage": {"size": "100Gi"},
            "vllm": {"selector": {"matchLabels": {"app": "vllm"}}, "version": "0.33", "cpuBytes": "8Gi"},
            "events": {"enabled": True, **events},
        }
    )


def settings_of(s: TieredKVCacheSpec) -> AgentSettings:
    """The agent settings the rendered environment gives (as pydantic-settings reads the variables)."""
    env = {e["name"]: e["value"] for e in agents.agent_env(CACHE, s, None, "h") if "value" in e}
    events = {k: v for k, v in env.items() if k.startswith("TIEREDKV_EVENTS")}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in events.items():
            patch.setenv(name, value)
        return AgentSettings(
            pod_ip="127.0.0.1",
            events_port=free_port(),
            events_replay_port=free_port(),
            events_summary_port=0,
            cache_namespace="team",
            cache_name="shared",
        )


def test_a_default_filter_renders_nothing_and_the_agent_publishes_everything() -> None:
    plain, explicit = spec(), spec(filter={})
    assert agents.agent_env(CACHE, plain, None, "h") == agents.agent_env(CACHE, explicit, None, "h")
    settings = settings_of(plain)
    assert EventFilter.build("pool:team/shared", settings.events_kinds, [], []).everything


def test_the_caches_filter_reaches_the_agents_publisher() -> None:
    chosen = spec(
        filter={"kinds": ["BlockStored", "AllBlocksCleared"], "models": ["org/model"], "groups": [0]}
    )
    settings = settings_of(chosen)
    assert settings.events_kinds == ["BlockStored", "AllBlocksCleared"]
    assert (settings.events_models, settings.events_groups) == (["org/model"], [0])
    events = block_events(settings)
    assert events is not None
    try:
        wanted = topic_for("pool:team/shared", "org/model")
        admits = events.publisher.filter.admits
        assert admits(wanted, "BlockStored", 0) and admits(wanted, "AllBlocksCleared", None)
        assert not admits(wanted, "BlockRemoved", 0)
        assert not admits(wanted, "BlockStored", 1)
        assert not admits(topic_for("pool:team/shared", "org/other"), "BlockStored", 0)
    finally:
        events.close()


@pytest.mark.parametrize(
    ("chosen", "message"),
    [
        ({"kinds": []}, "at least 1 item"),
        ({"kinds": ["BlockEvicted"]}, "BlockStored"),
        ({"kinds": ["BlockStored", "BlockStored"]}, "names a kind twice"),
        ({"models": ["bad\nname"]}, "pattern"),
        ({"models": [""]}, "at least 1 character"),
        ({"models": [f"m{n}" for n in range(65)]}, "at most 64 items"),
        ({"groups": [-1]}, "greater than or equal to 0"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_a_filter_that_cannot_mean_anything_is_refused_with_a_message(
    chosen: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(filter=chosen)


def test_the_publisher_sends_and_keeps_only_what_its_filter_admits_and_counts_the_rest() -> None:
    only = EventFilter.build(IDENTITY, ["BlockStored", "AllBlocksCleared"], ["org/model"], [0])
    pub = publisher(event_filter=only)
    try:
        with zmq.Context() as ctx:
            sub = subscribe(ctx, pub)
            changes = [
                stored(1),
                removed(1),  # a kind left out
                stored(2, OTHER),  # a model left out
                Change(WANTED, False, (3).to_bytes(32, "big"), 1, "org_model_0123456789ab"),  # group 1
                Change(WANTED, True, b"", 0, None, cleared=True),  # no group: admitted
                stored(4),
            ]
            assert all(pub.publish(c) for c in changes)  # leaving out is no failure
            received = []
            while len(received) < 3:
                topic, _, payload = sub.recv_multipart()
                assert topic == WANTED.encode()
                received += [type(e).__name__ for e in decode_batch(payload).events]
            assert received == ["BlockStored", "AllBlocksCleared", "BlockStored"]
            assert (pub.stats().filtered_events, pub.stats().dropped_events) == (3, 0)
            wait_for(lambda: pub.stats().published_events == 3)
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.RCVTIMEO, 5000)
            assert pub.replay_endpoint is not None
            dealer.connect(pub.replay_endpoint)
            dealer.send_multipart((b"", (0).to_bytes(8, "big")))
            kept = []
            while (frames := dealer.recv_multipart())[2] != END_SEQ:
                kept += [type(e).__name__ for e in decode_batch(frames[3]).events]
            assert kept == received
            sub.close(linger=0)
            dealer.close(linger=0)
    finally:
        pub.close()
