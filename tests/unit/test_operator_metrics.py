"""The operator's metrics: reconciles counted by result and timed, admissions by outcome, and the per-cache
gauges kept from the caches' objects, all with series present at zero."""

from __future__ import annotations

from typing import Any

import pytest

from tieredkv_operator import metrics

pytestmark = pytest.mark.unit


def value(name: str, **labels: str) -> float:
    found = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if found is None else found


def cache(name: str, phase: str, ready: int, desired: int, **conditions: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": name},
        "spec": {"capacity": {"highWatermark": 0.7}},
        "status": {
            "phase": phase,
            "agents": {"desired": desired, "ready": ready},
            "conditions": [{"type": t, "status": s} for t, s in conditions.items()],
        },
    }


def test_every_label_combination_exists_before_anything_happened() -> None:
    for op in ("apply", "refresh"):
        for result in metrics.RESULTS:
            assert (
                metrics.REGISTRY.get_sample_value("tieredkv_reconciles_total", {"op": op, "result": result})
                is not None
            )
    skipped = {"webhook": "pods", "outcome": "skipped", "skip_reason": "seed-conflict"}
    assert metrics.REGISTRY.get_sample_value("tieredkv_webhook_admissions_total", skipped) is not None


def test_a_reconcile_is_counted_by_the_result_its_status_shows_and_timed() -> None:
    before = value("tieredkv_reconciles_total", op="apply", result="failed")
    count = value("tieredkv_reconcile_duration_seconds_count", op="apply")
    with metrics.timed_reconcile(apply=True) as report:
        report({"conditions": [{"type": "Ready", "reason": "ReconcileError"}]})
    assert value("tieredkv_reconciles_total", op="apply", result="failed") == before + 1
    assert value("tieredkv_reconcile_duration_seconds_count", op="apply") == count + 1


def test_an_invalid_spec_and_a_clean_pass_have_their_own_results() -> None:
    assert (
        metrics.reconcile_result({"conditions": [{"type": "ConfigValid", "reason": "InvalidSpec"}]})
        == "invalid"
    )
    assert metrics.reconcile_result({"conditions": [{"type": "Ready", "reason": "Reconciled"}]}) == "success"


def test_a_reconcile_that_raises_counts_as_an_exception() -> None:
    before = value("tieredkv_reconciles_total", op="refresh", result="exception")
    with pytest.raises(RuntimeError), metrics.timed_reconcile(apply=False):
        raise RuntimeError("boom")
    assert value("tieredkv_reconciles_total", op="refresh", result="exception") == before + 1


def test_admissions_are_counted_by_webhook_outcome_and_skip_reason() -> None:
    labels = {"webhook": "pods", "outcome": "skipped", "skip_reason": "cache-ambiguous"}
    before = value("tieredkv_webhook_admissions_total", **labels)
    metrics.record_admission("pods", "skipped", "cache-ambiguous", 0.001)
    assert value("tieredkv_webhook_admissions_total", **labels) == before + 1


def test_cache_gauges_follow_the_objects_and_forget_deleted_caches() -> None:
    collector = metrics.CacheCollector()
    collector.observe(cache("a", "Ready", 2, 2, Ready="True", SeedConsistent="True"))
    collector.observe(cache("b", "Degraded", 1, 2, Ready="False", SeedConsistent="False"))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in collector.collect() for s in f.samples
    }

    def get(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert get("tieredkv_caches", phase="Ready") == 1 and get("tieredkv_caches", phase="Degraded") == 1
    assert get("tieredkv_caches", phase="Pending") == 0
    assert get("tieredkv_cache_agents", namespace="ns", cache="b", state="ready") == 1
    assert (
        get("tieredkv_cache_condition", namespace="ns", cache="b", type="SeedConsistent", status="False") == 1
    )
    assert (
        get("tieredkv_cache_condition", namespace="ns", cache="b", type="SeedConsistent", status="True") == 0
    )
    assert (
        get("tieredkv_cache_condition", namespace="ns", cache="a", type="AgentsReady", status="Unknown") == 1
    )
    assert get("tieredkv_cache_watermark_ratio", namespace="ns", cache="a", level="high") == 0.7
    assert get("tieredkv_cache_watermark_ratio", namespace="ns", cache="a", level="low") == 0.8
    collector.forget("ns", "b")
    names = {s.labels.get("cache") for f in collector.collect() for s in f.samples}
    assert "b" not in names and "a" in names
