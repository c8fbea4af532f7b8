"""The agent's file-tier thread counts follow the volume's latency unless they are given."""

from __future__ import annotations

import pytest

from tests.unit.test_builders import BASE, CACHE
from tieredkv_agent.config import IO_THREADS, AgentSettings
from tieredkv_operator.resources import agents
from tieredkv_operator.spec import TieredKVCacheSpec

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TIEREDKV_VOLUME_LATENCY", "TIEREDKV_READ_THREADS", "TIEREDKV_WRITE_THREADS"):
        monkeypatch.delenv(name, raising=False)


def test_a_local_volume_gets_4_and_4_threads_and_a_network_volume_16_and_16() -> None:
    local, network = AgentSettings(), AgentSettings(volume_latency="network")
    assert (local.read_threads, local.write_threads) == IO_THREADS["local"] == (4, 4)
    assert (network.read_threads, network.write_threads) == IO_THREADS["network"] == (16, 16)


def test_thread_counts_set_in_the_environment_win_over_the_volume_latency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TIEREDKV_VOLUME_LATENCY", "network")
    monkeypatch.setenv("TIEREDKV_WRITE_THREADS", "3")
    settings = AgentSettings()
    assert (settings.read_threads, settings.write_threads) == (16, 3)


def test_an_unknown_volume_latency_is_refused() -> None:
    with pytest.raises(ValueError, match="volume_latency"):
        AgentSettings(volume_latency="tape")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("agent", "threads"),
    [
        ({}, (4, 4)),
        ({"volumeLatency": "network"}, (16, 16)),
        ({"volumeLatency": "network", "readThreads": 3}, (3, 16)),
        ({"writeThreads": 7}, (4, 7)),
    ],
)
def test_the_agent_threads_the_operator_renders_follow_the_caches_volume_latency_and_counts(
    agent: dict[str, object], threads: tuple[int, int]
) -> None:
    spec = TieredKVCacheSpec.model_validate({**BASE, "agent": agent})
    env = agents.agent_env(CACHE, spec, max_bytes=None, config_hash="abc")
    plain = {e["name"].removeprefix("TIEREDKV_").lower(): e["value"] for e in env if "value" in e}
    settings = AgentSettings(**plain)
    assert (settings.read_threads, settings.write_threads) == threads
