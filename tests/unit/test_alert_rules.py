"""The alert rules: valid for promtool, each proven by promtool tests to fire on a broken cache and stay
silent on a healthy one, built only from metrics that exist, with a runbook section each, and the same in
the plain rules file, the chart's copy and the rendered PrometheusRule."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from tests.unit.chart_helpers import CHART, ROOT, find, render, run_helm
from tests.unit.metric_names import known_series, metric_names
from tieredkv_devcluster import paths

pytestmark = pytest.mark.unit

RULES = ROOT / "deploy" / "prometheus" / "tieredkv-rules.yaml"
TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.yaml"))
OPERATIONS = ROOT / "docs" / "operations.md"
REQUIRED = {
    "TieredKVAgentsNotReady",
    "TieredKVVolumeAboveHighWatermark",
    "TieredKVGCStalled",
    "TieredKVBlockFailureRatioHigh",
    "TieredKVStoresDroppedForBacklog",
    "TieredKVSeedMismatch",
    "TieredKVWebhookSkippingPods",
    "TieredKVNoGCLeader",
    "TieredKVVolumeFull",
}


def promtool() -> str:
    binary = paths.tool_binary("promtool")
    if binary is None:
        pytest.skip("promtool is not installed: run `make prometheus`")
    return str(binary)


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules_file() -> None:
    out = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtools_unit_tests_of_the_alerts_pass() -> None:
    out = subprocess.run(
        [promtool(), "test", "rules", *(p.name for p in TESTS)],
        capture_output=True,
        text=True,
        check=False,
        cwd=TESTS[0].parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_is_tested_both_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test") or []:
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {r["alert"] for r in _rules()}
    assert alerts >= REQUIRED
    assert firing == alerts, f"never shown firing: {alerts - firing}"
    assert silent == alerts, f"never shown silent: {alerts - silent}"


def test_the_rules_use_only_metrics_the_agent_or_the_operator_export() -> None:
    series = known_series()
    for rule in _rules():
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= series, f"{rule['alert']} uses unknown metrics {used - series}"


def _anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section() -> None:
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", OPERATIONS.read_text(), re.M)}
    for rule in _rules():
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"]
        doc, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert doc == "docs/operations.md" and anchor == rule["alert"].lower()
        assert anchor in anchors, f"no section {rule['alert']} in docs/operations.md"


def test_the_chart_ships_the_plain_rules_file_unchanged() -> None:
    chart_copy = CHART / "files" / "prometheus" / "tieredkv-rules.yaml"
    assert chart_copy.read_bytes() == RULES.read_bytes(), f"copy {RULES} to {chart_copy}"


def test_the_rendered_prometheus_rule_holds_exactly_the_plain_rules() -> None:
    docs = render("observability-values.yaml")
    rule = find(docs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_optional_objects_are_off_by_default_and_refused_without_their_crds() -> None:
    kinds = {d["kind"] for d in render()}
    assert not kinds & {"PrometheusRule", "ServiceMonitor", "ConfigMap", "Certificate"}
    for value, needs in [
        ("metrics.prometheusRule.enabled=true", "monitoring.coreos.com"),
        ("metrics.serviceMonitor.enabled=true", "monitoring.coreos.com"),
        ("webhook.tls.certManager.enabled=true", "cert-manager.io"),
    ]:
        out = run_helm("template", "tkv", str(CHART), "--set", value, check=False)
        assert out.returncode != 0 and needs in out.stderr, value
