"""The API server's rules as the webhook applies them to what a spec hands on to its children."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tieredkv_operator import api_rules
from tieredkv_operator.admission.child_checks import child_errors
from tieredkv_operator.spec import TieredKVCacheSpec

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "value"),
    [("1Gi", Decimal(2**30)), ("500m", Decimal("0.5")), ("2e3", Decimal(2000)), ("1.5k", Decimal(1500))],
)
def test_quantities_parse_like_the_api_server(text: str, value: Decimal) -> None:
    assert api_rules.quantity(text) == value


@pytest.mark.parametrize("text", ["lots", "1GB", "", "1 Gi", "--1", True])
def test_what_is_no_quantity_is_refused(text: object) -> None:
    assert api_rules.quantity(text) is None


def test_label_keys_and_values_follow_the_qualified_name_rules() -> None:
    assert api_rules.labels({"example.com/zone": "a-1", "k": ""}) == []
    for key in ("bad key!", "a/b/c", "-x", "k" * 64, "/x"):
        assert api_rules.labels({key: "v"}), key
    assert api_rules.labels({"k": "v" * 64}) and api_rules.labels({"k": "a b"})


def test_tolerations_are_checked_for_effect_operator_and_unknown_keys() -> None:
    assert api_rules.toleration({"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}) == []
    assert "Bogus" in api_rules.toleration({"key": "k", "effect": "Bogus"})[0]
    assert "kee" in api_rules.toleration({"kee": "k", "operator": "Exists"})[0]
    assert api_rules.toleration({"operator": "Equal"})  # an empty key needs Exists
    assert api_rules.toleration({"key": "k", "tolerationSeconds": 5, "effect": "NoSchedule"})


def test_resources_need_known_names_quantities_and_requests_within_limits() -> None:
    assert api_rules.resource_requirements({"limits": {"memory": "1Gi"}, "requests": {"cpu": "100m"}}) == []
    assert "lots" in api_rules.resource_requirements({"limits": {"memory": "lots"}})[0]
    assert api_rules.resource_requirements({"requests": {"cpu": "2"}, "limits": {"cpu": "1"}})
    assert api_rules.resource_requirements({"limits": {"gpu": "1"}})
    assert api_rules.resource_requirements({"claims": []})


def test_a_dotted_cache_name_is_refused_for_its_metrics_service() -> None:
    spec = TieredKVCacheSpec.model_validate(
        {
            "storage": {"size": "1Gi"},
            "vllm": {"version": "0.33", "cpuBytes": "1Gi", "selector": {"matchLabels": {"a": "b"}}},
        }
    )
    assert child_errors("ok", "ns", spec) == []
    errors = child_errors("a.b.c", "ns", spec)
    assert errors and all(e.startswith("metadata.name: Service") for e in errors)
