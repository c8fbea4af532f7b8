"""docs/metrics.md lists exactly the metrics each process's registry exports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
_NAME = re.compile(r"^\| `(tieredkv_[a-z0-9_]+)` \|")


def documented(section: str) -> set[str]:
    """Metric names in the table under the `## <section>` heading."""
    text = DOC.read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return {m.group(1) for line in body.splitlines() if (m := _NAME.match(line))}


def exported(registry: CollectorRegistry) -> set[str]:
    """Metric family names as documented (counters without the `_total` the client adds back)."""
    names = set()
    for family in registry.collect():
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        names.add(family.name + suffix)
    return names


def test_the_agent_metrics_page_matches_the_agent_registry() -> None:
    from tieredkv_agent.metrics import AgentMetrics

    assert documented("Agent") == exported(AgentMetrics().registry)


def test_the_operator_metrics_page_matches_the_operator_registry() -> None:
    from tieredkv_operator import metrics

    assert documented("Operator") == exported(metrics.REGISTRY)


def test_every_documented_metric_name_follows_the_naming_rule() -> None:
    rule = re.compile(r"^tieredkv_[a-z0-9]+(_[a-z0-9]+)*$")
    for section in ("Agent", "Operator"):
        names = documented(section)
        assert names and all(rule.match(n) for n in names), section


def test_no_metric_name_is_exported_by_both_processes() -> None:
    from tieredkv_agent.metrics import AgentMetrics
    from tieredkv_operator import metrics as operator

    assert not exported(AgentMetrics().registry) & exported(operator.REGISTRY)
