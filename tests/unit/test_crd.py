"""The generated CRD: the committed copy is current, structural for a 1.20 API server, true to the model."""

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from tieredkv_operator import crd
from tieredkv_operator.spec import TieredKVCacheSpec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "crds" / "tieredkv.io_tieredkvcaches.yaml"
DOCS = ROOT / "docs" / "configuration.md"
FORBIDDEN_KEYS = {
    "$ref",
    "$defs",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "title",
    "const",
    "x-kubernetes-validations",
}
MINIMAL: dict[str, Any] = {
    "storage": {"size": "100Gi"},
    "vllm": {"selector": {"matchLabels": {"app": "vllm"}}, "version": "0.33", "cpuBytes": "8Gi"},
}


def root_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd.crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its field path: spec.storage.size, spec.agent.tolerations[], ..."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}" if path else name)
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Default an object the way the API server does: absent properties with a default, then recurse."""
    if not isinstance(value, dict) or "properties" not in schema:
        return value
    out = dict(value)
    for name, sub in schema["properties"].items():
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
        if name in out:
            out[name] = apply_defaults(sub, out[name])
    return out


def test_the_committed_crd_matches_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert crd.main() == 0
    generated = capsys.readouterr().out
    assert generated == crd.render_crd_yaml()
    assert COMMITTED.read_text() == generated, (
        f"crds/ is stale: run `.venv/bin/python -m tieredkv_operator.crd > {COMMITTED.relative_to(ROOT)}`"
    )


def test_the_crd_declares_the_resource_names_and_the_status_subresource() -> None:
    manifest = yaml.safe_load(COMMITTED.read_text())
    assert manifest["apiVersion"] == "apiextensions.k8s.io/v1"
    assert manifest["metadata"]["name"] == "tieredkvcaches.tieredkv.io"
    assert manifest["spec"]["scope"] == "Namespaced"
    names = manifest["spec"]["names"]
    assert (names["kind"], names["plural"]) == ("TieredKVCache", "tieredkvcaches")
    assert names["shortNames"] == ["tkv"]
    (version,) = manifest["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_every_node_has_a_type_or_says_why_not() -> None:
    for path, node in walk(root_schema(), ""):
        typed = "type" in node
        free = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
        assert typed or free, f"{path or '<root>'} has no type"
        if node.get("x-kubernetes-int-or-string"):
            assert not typed, f"{path}: int-or-string must not also declare a type"


def test_the_schema_uses_only_structural_constructs() -> None:
    for path, node in walk(root_schema(), ""):
        assert not FORBIDDEN_KEYS & set(node), f"{path}: {sorted(FORBIDDEN_KEYS & set(node))}"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("uniqueItems") is not True, path
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(bound, True) is True, f"{path}: {bound} must be a boolean in OpenAPI 3.0"


def test_every_spec_object_keeps_unknown_fields_for_the_webhook_to_refuse_and_the_status_prunes() -> None:
    nodes = list(walk(root_schema(), ""))
    preserved = {path for path, node in nodes if node.get("x-kubernetes-preserve-unknown-fields")}
    objects = {path for path, node in nodes if "properties" in node and path.startswith("spec")}
    free_form = {"spec.agent.resources", "spec.agent.tolerations[]", "spec.vllm.extraConfig"}
    assert preserved == objects | free_form
    assert not any(path.startswith("status") for path in preserved)


def test_the_status_schema_carries_no_defaults() -> None:
    for path, node in walk(root_schema()["properties"]["status"], "status"):
        assert "default" not in node, path


def test_api_server_defaults_agree_with_the_model_defaults() -> None:
    defaulted = apply_defaults(root_schema()["properties"]["spec"], MINIMAL)
    from_server = TieredKVCacheSpec.model_validate(defaulted)
    assert from_server == TieredKVCacheSpec.model_validate(MINIMAL)
    assert defaulted["agent"]["storeAdmission"] == {"maxTrackerSize": 64000, "threshold": 0}
    assert defaulted["storage"]["accessModes"] == ["ReadWriteMany"]
    assert defaulted["storage"]["retainOnDelete"] is True


def test_required_fields_and_enums_come_from_the_model() -> None:
    spec = root_schema()["properties"]["spec"]
    assert spec["required"] == ["storage", "vllm"]
    vllm = spec["properties"]["vllm"]
    assert vllm["required"] == ["selector", "version", "cpuBytes"]
    assert vllm["properties"]["mode"]["enum"] == ["native", "agent"]
    assert vllm["properties"]["hashAlgo"]["enum"] == ["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"]
    admission = spec["properties"]["agent"]["properties"]["storeAdmission"]["properties"]
    assert admission["maxTrackerSize"]["minimum"] == 1


def test_printer_columns_point_at_fields_the_schema_has() -> None:
    paths = {path for path, _ in walk(root_schema(), "")}
    columns = crd.crd_manifest()["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [column["name"] for column in columns][:4] == ["Phase", "Ready", "Desired", "PVC"]
    for column in columns:
        json_path = column["jsonPath"].removeprefix(".")
        assert json_path in paths or json_path == "metadata.creationTimestamp", json_path


def test_every_field_is_documented_in_the_configuration_guide() -> None:
    text = DOCS.read_text()
    fields = [
        path
        for path, _ in walk(root_schema(), "")
        if path.startswith(("spec.", "status.")) and not path.endswith(("[]", "{}"))
    ]
    missing = [path for path in fields if f"`{path}`" not in text]
    assert not missing, f"docs/configuration.md does not describe {missing}"


def test_a_field_without_a_structural_equivalent_fails_generation_loudly() -> None:
    class Ambiguous(BaseModel):
        port: int | str

    with pytest.raises(crd.CrdSchemaError, match=r"Ambiguous.port: no structural equivalent for .*'anyOf'"):
        crd.structural_schema(Ambiguous, with_defaults=True)
