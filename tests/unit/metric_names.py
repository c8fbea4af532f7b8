"""Metric names as Prometheus stores them, from the agent's and the operator's registries, and the names a
PromQL expression uses (for the alert rule and dashboard tests)."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "info": ("_info",),
}
_NAME = re.compile(r"\btieredkv_[a-z0-9_]*[a-z0-9]\b")


def series_names(registry: CollectorRegistry) -> set[str]:
    """Every series name a scrape of `registry` can produce (counter `_total`, histogram `_bucket`, ...)."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
    return names


def known_series() -> set[str]:
    from tieredkv_agent.metrics import AgentMetrics
    from tieredkv_operator import metrics as operator

    return series_names(AgentMetrics().registry) | series_names(operator.REGISTRY)


def metric_names(expr: str) -> set[str]:
    """The tieredkv metric names a PromQL expression refers to (no label is named tieredkv_*)."""
    return set(_NAME.findall(expr))
