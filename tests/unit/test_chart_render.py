"""The chart lints strictly, renders every ci/ scenario into manifests valid for Kubernetes 1.28, and ships
the repository's CRD unchanged."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.unit.chart_helpers import CHART, ROOT, SCENARIOS, find, render, run_helm

pytestmark = pytest.mark.unit

CUSTOM_KINDS = {
    "ClusterKopfPeering",
    "KopfPeering",
    "Certificate",
    "Issuer",
    "ServiceMonitor",
    "PrometheusRule",
}
"""Kinds of other projects' CRDs: not in the 1.28 schemas, checked by their own tests below."""


def test_the_chart_passes_helm_lint_in_strict_mode_for_every_scenario() -> None:
    for scenario in SCENARIOS:
        out = run_helm("lint", "--strict", str(CHART), "-f", str(CHART / "ci" / scenario), check=False)
        assert out.returncode == 0, f"{scenario}:\n{out.stdout}{out.stderr}"


def test_there_are_ci_scenarios_for_defaults_namespaced_observability_and_the_local_cluster() -> None:
    assert {"default-values.yaml", "namespaced-values.yaml", "observability-values.yaml"} <= set(SCENARIOS)
    assert "sim-values.yaml" in SCENARIOS


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_object_is_valid_for_kubernetes_1_28(scenario: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in render(scenario):
        if doc["kind"] in CUSTOM_KINDS:
            assert doc["apiVersion"].split("/")[0] in ("kopf.dev", "cert-manager.io", "monitoring.coreos.com")
            continue
        kubernetes_validate.validate(doc, "1.28.0", strict=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_object_carries_the_recommended_labels(scenario: str) -> None:
    for doc in render(scenario):
        labels = doc["metadata"].get("labels") or {}
        for key in ("name", "instance", "component", "part-of", "managed-by", "version"):
            assert f"app.kubernetes.io/{key}" in labels, f"{doc['kind']} {doc['metadata']['name']}: {key}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_selectors_never_contain_the_chart_or_app_version(scenario: str) -> None:
    docs = render(scenario)
    selectors = [find(docs, "Deployment")["spec"]["selector"]["matchLabels"]]
    selectors += [d["spec"]["selector"] for d in docs if d["kind"] == "Service"]
    for selector in selectors:
        assert not {"helm.sh/chart", "app.kubernetes.io/version"} & set(selector)
    assert find(docs, "Deployment")["spec"]["template"]["metadata"]["labels"].items() >= selectors[0].items()


def _repo_crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load((ROOT / "crds" / "tieredkv.io_tieredkvcaches.yaml").read_text())
    return crd


def test_the_charts_crd_file_is_a_byte_for_byte_copy_of_the_repositorys() -> None:
    repo = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "files" / "crds").glob("*.yaml"))
    assert chart == repo, "run `make chart-crds`"
    for name in repo:
        same = (CHART / "files" / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes()
        assert same, f"charts/tieredkv/files/crds/{name} differs from crds/{name}: run `make chart-crds`"


def test_the_rendered_crd_equals_the_repositorys_apart_from_labels_and_the_keep_annotation() -> None:
    rendered = find(render(), "CustomResourceDefinition", "tieredkvcaches.tieredkv.io")
    repo = _repo_crd()
    assert rendered["spec"] == repo["spec"]
    assert rendered["metadata"]["labels"].items() >= repo["metadata"]["labels"].items()
    assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_the_crd_can_be_left_out_or_left_to_be_deleted_on_uninstall() -> None:
    assert not [
        d
        for d in render("default-values.yaml", "crds.enabled=false")
        if d["kind"] == "CustomResourceDefinition"
    ]
    crd = find(render("default-values.yaml", "crds.keep=false"), "CustomResourceDefinition")
    assert "annotations" not in crd["metadata"]


def test_the_peering_crds_in_helms_crds_directory_define_what_kopf_watches() -> None:
    docs = list(yaml.safe_load_all((CHART / "crds" / "kopf-peering.yaml").read_text()))
    kinds = {(d["spec"]["names"]["kind"], d["spec"]["scope"]) for d in docs}
    assert kinds == {("ClusterKopfPeering", "Cluster"), ("KopfPeering", "Namespaced")}
    assert all(d["spec"]["group"] == "kopf.dev" for d in docs)


def test_the_peering_object_is_rendered_only_when_its_crd_is_known() -> None:
    with_api = render("default-values.yaml")
    assert find(with_api, "ClusterKopfPeering")["metadata"]["name"] == "tkv-tieredkv"
    assert not [d for d in render("default-values.yaml", apis=False) if d["kind"].endswith("KopfPeering")]
    namespaced = [d for d in render("namespaced-values.yaml") if d["kind"] == "KopfPeering"]
    assert sorted(d["metadata"]["namespace"] for d in namespaced) == ["team-a", "team-b"]
