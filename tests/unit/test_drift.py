"""Drift (pure): foreign field managers in the parts the operator owns, and the repaired object."""

from __future__ import annotations

from typing import Any

import pytest

from tieredkv_operator import drift

pytestmark = pytest.mark.unit


def entry(manager: str, *fields: str, operation: str = "Update") -> dict[str, Any]:
    return {"manager": manager, "operation": operation, "fieldsV1": {f: {} for f in fields}}


def live(*entries: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": "d",
            "resourceVersion": "7",
            "labels": {"team": "x"},
            "managedFields": list(entries),
        },
        "spec": {"template": {"spec": {"nodeSelector": {"foreign": "yes"}}}},
        "status": {"numberReady": 1},
    }


def test_only_other_managers_in_owned_parts_count_as_drift() -> None:
    ours = entry("tieredkv-operator", "f:spec", operation="Apply")
    assert drift.foreign_managers(live(ours)) == []
    assert drift.foreign_managers(live(ours, entry("kube-controller-manager", "f:status"))) == []
    assert drift.foreign_managers(live(ours, entry("kubectl-edit", "f:metadata"))) == []
    assert drift.foreign_managers(live(ours, entry("kubectl-patch", "f:spec"))) == ["kubectl-patch"]


def test_the_repair_takes_the_desired_parts_and_keeps_metadata_and_our_managed_fields() -> None:
    ours = entry("tieredkv-operator", "f:spec", operation="Apply")
    desired = {"kind": "DaemonSet", "spec": {"template": {"spec": {}}}}
    fixed = drift.repaired(live(ours, entry("kubectl-patch", "f:spec")), desired)
    assert fixed["spec"] == desired["spec"] and "status" not in fixed
    assert fixed["metadata"]["resourceVersion"] == "7" and fixed["metadata"]["labels"] == {"team": "x"}
    assert fixed["metadata"]["managedFields"] == [ours]


def test_a_config_map_loses_keys_and_binary_data_it_should_not_have() -> None:
    cm = {"kind": "ConfigMap", "metadata": {}, "data": {"a": "1", "extra": "2"}, "binaryData": {"b": "AA=="}}
    fixed = drift.repaired(cm, {"kind": "ConfigMap", "data": {"a": "1"}})
    assert fixed["data"] == {"a": "1"} and "binaryData" not in fixed
    assert drift.differs(cm, fixed) == ["data", "binaryData"]
