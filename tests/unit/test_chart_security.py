"""The operator Deployment runs restricted, with peering, probes and no default resources; its RBAC is split,
commented rule by rule, as narrow as the code uses, and never grants Secrets cluster-wide."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.unit.chart_helpers import SCENARIOS, find, render, render_text, template_sources
from tieredkv_operator.names import CacheRef
from tieredkv_operator.resources import rbac

pytestmark = pytest.mark.unit

Manifest = dict[str, Any]
READ_WRITE_LIMIT = {"get", "list", "watch", "create", "update", "patch"}
"""No rule of the operator may delete, deletecollection, escalate, bind or impersonate."""


def _operator(docs: list[Manifest]) -> Manifest:
    container: Manifest = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return container


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_operator_runs_non_root_with_a_read_only_root_and_no_capabilities(scenario: str) -> None:
    docs = render(scenario)
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    ctx = _operator(docs)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod


def test_resources_are_unset_by_default_and_set_when_given() -> None:
    assert "resources" not in _operator(render())
    assert _operator(render("namespaced-values.yaml"))["resources"]["limits"] == {"memory": "256Mi"}


def test_probes_use_kopfs_health_endpoint_on_the_port_the_operator_listens_on() -> None:
    container = _operator(render())
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    health = next(p for p in container["ports"] if p["name"] == "health")["containerPort"]
    assert f"--liveness=http://$(POD_IP):{health}/healthz" in container["args"]


def test_replicas_coordinate_through_the_peering_object_or_run_standalone_when_peering_is_off() -> None:
    docs = render()
    assert "--peering=tkv-tieredkv" in _operator(docs)["args"]
    assert find(docs, "ClusterKopfPeering")["metadata"]["name"] == "tkv-tieredkv"
    assert "--standalone" in _operator(render("minimal-values.yaml"))["args"]


def test_the_operator_watches_only_the_listed_namespaces_when_given() -> None:
    args = _operator(render("namespaced-values.yaml"))["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--all-namespaces" not in args


def _roles(docs: list[Manifest]) -> dict[str, Manifest]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}


@pytest.mark.parametrize("scenario", ["default-values.yaml", "namespaced-values.yaml"])
def test_every_rule_uses_only_read_and_write_verbs_on_named_resources(scenario: str) -> None:
    for role in _roles(render(scenario)).values():
        for rule in role["rules"]:
            assert set(rule["verbs"]) <= READ_WRITE_LIMIT, rule
            assert "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule


@pytest.mark.parametrize("scenario", ["default-values.yaml", "namespaced-values.yaml"])
def test_every_rbac_rule_is_preceded_by_a_comment_saying_why(scenario: str) -> None:
    text = template_sources(render_text(scenario))["tieredkv/templates/rbac.yaml"]
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"^\s*- apiGroups:", line)]
    assert starts
    for i in starts:
        assert lines[i - 1].strip().startswith("# "), f"rule without a comment: {lines[i]} {lines[i + 1]}"


def test_secrets_are_granted_only_per_namespace_never_cluster_wide() -> None:
    for scenario in SCENARIOS:
        docs = render(scenario, "rbac.secretNamespaces={inference}")
        roles = _roles(docs)
        cluster_bound = {d["roleRef"]["name"] for d in docs if d["kind"] == "ClusterRoleBinding"}
        for name in cluster_bound:
            assert all("secrets" not in r["resources"] for r in roles[name]["rules"]), name
    docs = render("default-values.yaml", "rbac.secretNamespaces={inference,chat}")
    secret_bindings = [
        d for d in docs if d["kind"] == "RoleBinding" and d["roleRef"]["name"].endswith("-secrets")
    ]
    assert sorted(d["metadata"]["namespace"] for d in secret_bindings) == ["chat", "inference"]


def test_a_namespaced_operator_gets_role_bindings_in_its_namespaces_only() -> None:
    docs = render("namespaced-values.yaml")
    cluster_bound = {d["roleRef"]["name"] for d in docs if d["kind"] == "ClusterRoleBinding"}
    assert cluster_bound == {"tkv-tieredkv-cluster"}
    bound = sorted(
        (d["metadata"]["namespace"], d["roleRef"]["name"]) for d in docs if d["kind"] == "RoleBinding"
    )
    assert bound == [
        ("team-a", "tkv-tieredkv-caches"),
        ("team-a", "tkv-tieredkv-secrets"),
        ("team-b", "tkv-tieredkv-caches"),
        ("team-b", "tkv-tieredkv-secrets"),
    ]


def _grants(rules: list[Manifest], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"]
        and resource in r["resources"]
        and verb in r["verbs"]
        and not r.get("resourceNames")
        for r in rules
    )


def test_the_operator_holds_every_verb_of_the_agent_role_it_creates() -> None:
    """RBAC lets the operator create a Role only with permissions it holds itself."""
    rules = _roles(render())["tkv-tieredkv-caches"]["rules"]
    agent_role = rbac.role(CacheRef("c", "ns", "uid"))
    for rule in agent_role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert _grants(rules, group, resource, verb), (group, resource, verb)


def test_the_operator_may_apply_every_kind_the_reconcile_applies() -> None:
    rules = _roles(render())["tkv-tieredkv-caches"]["rules"]
    applied = [
        ("", "persistentvolumeclaims"),
        ("", "configmaps"),
        ("", "serviceaccounts"),
        ("", "services"),
        ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "rolebindings"),
        ("apps", "daemonsets"),
    ]
    for group, resource in applied:
        assert _grants(rules, group, resource, "create") and _grants(rules, group, resource, "patch")
    for group, resource, verb in [
        ("tieredkv.io", "tieredkvcaches", "watch"),
        ("tieredkv.io", "tieredkvcaches/status", "patch"),
        ("", "pods", "watch"),
        ("", "events", "create"),
    ]:
        assert _grants(rules, group, resource, verb)
