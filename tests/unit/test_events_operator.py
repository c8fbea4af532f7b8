"""`spec.events`: the operator renders the agents' KV-events settings, container ports and Service ports."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tieredkv_agent.config import AgentSettings
from tieredkv_operator.names import CacheRef
from tieredkv_operator.resources import agents
from tieredkv_operator.spec import TieredKVCacheSpec

pytestmark = pytest.mark.unit

CACHE = CacheRef("shared", "team", "uid-1", 1)


def spec(**events: Any) -> TieredKVCacheSpec:
    return TieredKVCacheSpec.model_validate(
        {
            "storage": {"size": "100Gi"},
            "vllm": {"selector": {"matchLabels": {"app": "vllm"}}, "version": "0.33", "cpuBytes": "8Gi"},
            **({"events": events} if events else {}),
        }
    )


def template(s: TieredKVCacheSpec) -> dict[str, Any]:
    return agents.pod_template(CACHE, s, image="agent:1", max_bytes=None, config_hash="h")


def plain_env(s: TieredKVCacheSpec) -> dict[str, str]:
    return {e["name"]: e["value"] for e in agents.agent_env(CACHE, s, None, "h") if "value" in e}


def test_events_off_render_exactly_what_a_cache_without_the_field_renders() -> None:
    assert template(spec(enabled=False)) == template(spec())
    assert not any(name.startswith("TIEREDKV_EVENTS") for name in plain_env(spec()))
    assert [p["name"] for p in agents.metrics_service(CACHE, spec())["spec"]["ports"]] == ["metrics"]


def test_events_on_reach_the_agent_settings_its_container_ports_and_the_headless_service() -> None:
    on = spec(enabled=True, port=6000, replayPort=6001, summaryPort=6002)
    env = plain_env(on)
    settings = AgentSettings(
        **{k.removeprefix("TIEREDKV_").lower(): v for k, v in env.items() if k.startswith("TIEREDKV_EVENTS")}
    )
    assert (settings.events_enabled, settings.events_port, settings.events_replay_port) == (True, 6000, 6001)
    assert settings.events_summary_port == 6002
    (container,) = template(on)["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "metrics": 9400,
        "kv-events": 6000,
        "kv-replay": 6001,
        "kv-summary": 6002,
    }
    service = agents.metrics_service(CACHE, on)
    assert service["spec"]["clusterIP"] == "None"
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "metrics": (9400, "metrics"),
        "kv-events": (6000, "kv-events"),
        "kv-replay": (6001, "kv-replay"),
        "kv-summary": (6002, "kv-summary"),
    }
    assert template(on) != template(spec())  # turning events on rolls the agents


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ({"port": 5557, "replayPort": 5557}, "must differ"),
        ({"port": 9400}, "metrics port 9400"),
        ({"summaryPort": 5557}, "must differ"),
        ({"port": 80}, "greater than or equal to 1024"),
    ],
)
def test_events_ports_that_collide_or_are_privileged_are_refused(
    events: dict[str, int], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(enabled=True, **events)
