"""The examples in docs/examples are admitted by the real API server and webhooks, and accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.k8s import caches
from tests.k8s.operator_proc import OperatorProcess

pytestmark = pytest.mark.k8s

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "docs" / "examples").glob("*.yaml"))


def test_there_are_examples_to_check() -> None:
    assert EXAMPLES


def test_every_documented_cache_is_admitted_and_its_spec_accepted(
    api: client.ApiClient, ns: str, webhook_operator: OperatorProcess
) -> None:
    custom = client.CustomObjectsApi(api)
    names = []
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "TieredKVCache":
                continue
            doc["metadata"]["namespace"] = ns
            custom.create_namespaced_custom_object(caches.GROUP, caches.VERSION, ns, caches.PLURAL, doc)
            names.append(doc["metadata"]["name"])
    assert names
    for name in names:
        obj = caches.wait_condition(api, ns, name, "ConfigValid", "True", timeout=60)
        assert obj["status"]["configHash"]
