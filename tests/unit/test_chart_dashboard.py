"""The Grafana dashboard: every query is valid PromQL over metrics that exist, it covers what operators watch,
and the chart's ConfigMap carries it unchanged."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.chart_helpers import CHART, find, render
from tests.unit.metric_names import known_series, metric_names

pytestmark = pytest.mark.unit

DASHBOARD = CHART / "dashboards" / "tieredkv.json"


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def expressions() -> list[tuple[str, str]]:
    """(panel title, expr) of every query, template variables as the tests substitute them."""
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]


def concrete(expr: str, window: str = "5m") -> str:
    """The expression as Prometheus would get it from Grafana with every namespace and cache selected."""
    return expr.replace("$__rate_interval", window).replace("$namespace", ".*").replace("$cache", ".*")


def test_every_query_uses_only_metrics_the_agent_or_the_operator_export() -> None:
    series = known_series()
    for title, expr in expressions():
        used = metric_names(expr)
        assert used, title
        assert used <= series, f"panel {title!r} uses unknown metrics {used - series}"


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed: run `make promtool`")
    rules = [
        {"record": f"tieredkv:dashboard_query_{i}", "expr": concrete(e)}
        for i, (_, e) in enumerate(expressions())
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_dashboard_covers_hits_throughput_latency_queues_capacity_evictions_and_mismatches() -> None:
    used = set().union(*(metric_names(e) for _, e in expressions()))
    for needed in (
        "tieredkv_lookups_total",
        "tieredkv_block_bytes_total",
        "tieredkv_block_io_duration_seconds_bucket",
        "tieredkv_queue_blocks",
        "tieredkv_volume_usage_bytes",
        "tieredkv_volume_limit_bytes",
        "tieredkv_gc_evicted_bytes_total",
        "tieredkv_webhook_admissions_total",
        "tieredkv_cache_condition",
        "tieredkv_reconciles_total",
        "tieredkv_caches",
    ):
        assert needed in used, needed


def test_panels_have_ids_titles_descriptions_and_a_shared_datasource_variable() -> None:
    data = dashboard()
    panels = data["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"]
        assert panel["datasource"]["uid"] == "${datasource}"
    variables = {v["name"] for v in data["templating"]["list"]}
    assert variables == {"datasource", "namespace", "cache"}


def test_the_chart_puts_the_dashboard_unchanged_into_a_configmap_for_grafanas_sidecar() -> None:
    config_map = find(render("observability-values.yaml"), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["tieredkv.json"]) == dashboard()


def test_the_agent_service_monitor_selects_the_metrics_service_the_operator_builds() -> None:
    from tieredkv_operator.names import CacheRef
    from tieredkv_operator.resources import agents

    service = agents.metrics_service(CacheRef("c", "ns", "uid"))
    monitor = find(render("observability-values.yaml"), "ServiceMonitor", "tkv-tieredkv-agents")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    [relabel] = endpoint["relabelings"]
    assert relabel["targetLabel"] == "cache" and "tieredkv.io/cache" in service["metadata"]["labels"]
    operator = find(render("observability-values.yaml"), "ServiceMonitor", "tkv-tieredkv-operator")
    assert operator["spec"]["endpoints"][0]["honorLabels"] is True
