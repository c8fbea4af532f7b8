"""The node simulator's readiness probes follow the kubelet's timing and thresholds (pure bookkeeping)."""

from __future__ import annotations

import pytest

from tieredkv_devcluster.sim.supervisor import ProbeState

pytestmark = pytest.mark.unit


def probe_times(probe: dict[str, int], until: float, step: float = 0.25) -> list[float]:
    state, times, now = ProbeState(), [], 0.0
    while now <= until:
        if state.due(probe, now):
            times.append(now)
        now += step
    return times


def test_probes_run_after_the_initial_delay_then_once_per_period() -> None:
    assert probe_times({"initialDelaySeconds": 3, "periodSeconds": 5}, until=20) == [3, 8, 13, 18]


def test_the_period_defaults_to_ten_seconds_as_in_the_kubelet() -> None:
    assert probe_times({}, until=25) == [0, 10, 20]


def test_readiness_needs_success_threshold_passes_in_a_row() -> None:
    probe, state = {"successThreshold": 2}, ProbeState()
    assert state.record(probe, True, was_ready=False) is False
    assert state.record(probe, False, was_ready=False) is False
    assert state.record(probe, True, was_ready=False) is False
    assert state.record(probe, True, was_ready=False) is True


def test_a_ready_container_stays_ready_until_failure_threshold_failures_in_a_row() -> None:
    probe, state = {"failureThreshold": 3}, ProbeState()
    assert state.record(probe, False, was_ready=True) is True
    assert state.record(probe, False, was_ready=True) is True
    assert state.record(probe, True, was_ready=True) is True
    assert [state.record(probe, False, was_ready=True) for _ in range(3)] == [True, True, False]
