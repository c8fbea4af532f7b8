"""The operator's drift loop: which caches it refreshes, and when a peer's higher priority pauses it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tieredkv_operator.drift_loop import DriftLoop, Peering, cache_paths, outranked, peering_paths

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


def peer(priority: int, seen_ago_s: float, lifetime: int = 60) -> dict[str, Any]:
    return {
        "priority": priority,
        "lifetime": lifetime,
        "lastseen": (NOW - timedelta(seconds=seen_ago_s)).isoformat(),
    }


def test_a_live_peer_with_a_higher_priority_outranks_this_operator() -> None:
    assert outranked({"a@x": peer(200, 10)}, 100, NOW)


def test_a_dead_peer_or_one_of_lower_or_equal_priority_does_not() -> None:
    assert not outranked({"a@x": peer(200, 61)}, 100, NOW)
    assert not outranked({"a@x": peer(50, 1), "b@y": peer(100, 1)}, 100, NOW)
    assert not outranked({"junk": "not a peer", "bad": {"priority": 300}}, 100, NOW)


def test_caches_are_listed_cluster_wide_or_per_watched_namespace() -> None:
    assert cache_paths([]) == ["/apis/tieredkv.io/v1alpha1/tieredkvcaches"]
    assert cache_paths(["a", "b"])[1] == "/apis/tieredkv.io/v1alpha1/namespaces/b/tieredkvcaches"
    assert peering_paths("p", []) == ["/apis/kopf.dev/v1/clusterkopfpeerings/p"]
    assert peering_paths("p", ["a"]) == ["/apis/kopf.dev/v1/namespaces/a/kopfpeerings/p"]


class Objects:
    """API objects by path, read as the operator's Kube.read reads them (None: 404)."""

    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        self.objects = objects

    def read(self, path: str) -> dict[str, Any] | None:
        return self.objects.get(path)


def loop(
    objects: dict[str, dict[str, Any]], peering: Peering | None, seen: list[tuple[str, str]]
) -> DriftLoop:
    reader = Objects(objects)
    return DriftLoop(
        lambda: reader,
        lambda ns, name: seen.append((ns, name)),
        interval_s=1,
        namespaces=[],
        peering=peering,
        clock=lambda: NOW,
    )


CACHES = {
    "/apis/tieredkv.io/v1alpha1/tieredkvcaches": {
        "items": [
            {"metadata": {"namespace": "a", "name": "c1"}},
            {"metadata": {"namespace": "b", "name": "c2"}},
        ]
    }
}


def test_a_pass_refreshes_every_cache_when_alone_or_without_a_peering_object() -> None:
    seen: list[tuple[str, str]] = []
    assert loop(CACHES, None, seen).run_once() == 2
    assert loop(CACHES, Peering("default", 100), seen).run_once() == 2
    assert seen == [("a", "c1"), ("b", "c2")] * 2


def test_a_pass_does_nothing_while_a_live_peer_outranks_this_operator() -> None:
    seen: list[tuple[str, str]] = []
    objects = {**CACHES, "/apis/kopf.dev/v1/clusterkopfpeerings/default": {"status": {"new@x": peer(200, 5)}}}
    assert loop(objects, Peering("default", 100), seen).run_once() is None
    assert seen == []
