"""The TieredKVCache validating webhook: spec errors as field-named lines, and what an UPDATE may change."""

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tieredkv_operator.admission.validation import MAX_NAME_LENGTH, validate

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def body(name: str = "cache-native.yaml") -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return loaded


def changed(old: dict[str, Any], section: str, **fields: Any) -> dict[str, Any]:
    """A copy of `old` with spec.<section> fields replaced (None removes a field)."""
    new = copy.deepcopy(old)
    target = new["spec"].setdefault(section, {})
    for key, value in fields.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return new


def only_error(errors: list[str], field: str) -> str:
    assert len(errors) == 1, errors
    assert errors[0].startswith(field), errors
    return errors[0]


@pytest.mark.parametrize("name", ["cache-native.yaml", "cache-agent.yaml"])
def test_the_documented_examples_are_admitted_on_create_and_on_an_unchanged_update(name: str) -> None:
    assert validate(body(name), None) == []
    assert validate(body(name), body(name)) == []


def test_an_unknown_vllm_version_is_denied_listing_the_supported_lines() -> None:
    message = only_error(validate(changed(body(), "vllm", version="0.40"), None), "spec.vllm.version: ")
    assert "'0.40' is not supported" in message and "0.22" in message and "0.33" in message


def test_watermarks_in_the_wrong_order_are_denied() -> None:
    new = changed(body(), "capacity", lowWatermark=0.9, highWatermark=0.9)
    message = only_error(validate(new, None), "spec.capacity: ")
    assert "capacity.lowWatermark (0.9) must be below capacity.highWatermark (0.9)" in message


def test_max_bytes_above_the_claim_size_is_denied() -> None:
    message = only_error(validate(changed(body(), "capacity", maxBytes="3Ti"), None), "spec: ")
    assert "capacity.maxBytes" in message and "exceeds storage.size (2Ti" in message


def test_nested_errors_name_the_list_index_and_the_rejected_value() -> None:
    selector = {"matchLabels": {"a": "b"}, "matchExpressions": [{"key": "tier", "operator": "Near"}]}
    new = changed(body(), "vllm", selector=selector, mode="hybrid")
    errors = validate(new, None)
    assert "spec.vllm.selector.matchExpressions[0].operator: Input should be 'In', 'NotIn', " in errors[0]
    assert errors[0].endswith("(got 'Near')")
    assert errors[1] == "spec.vllm.mode: Input should be 'native' or 'agent' (got 'hybrid')"


def test_unknown_fields_and_a_missing_spec_are_denied() -> None:
    assert validate(changed(body(), "vllm", gpuBytes="1Gi"), None) == [
        "spec.vllm.gpuBytes: unknown field 'gpuBytes' (did you mean 'cpuBytes'?): the API server would drop "
        "it silently, so it is refused"
    ]
    assert only_error(validate({"metadata": {"name": "x"}}, None), "spec: required")


def test_a_name_too_long_for_the_metrics_service_is_denied_on_create() -> None:
    new = body()
    new["metadata"]["name"] = "c" * MAX_NAME_LENGTH
    assert validate(new, None) == []
    new["metadata"]["name"] = "c" * (MAX_NAME_LENGTH + 1)
    assert "at most 46 are allowed" in only_error(validate(new, None), "metadata.name")
    del new["metadata"]["name"]
    new["metadata"]["generateName"] = "c" * (MAX_NAME_LENGTH - 4)
    assert only_error(validate(new, None), "metadata.name")


def test_an_agent_socket_path_longer_than_a_unix_socket_allows_is_denied() -> None:
    new = changed(body("cache-agent.yaml"), "agent", socketDir="/var/run/" + "d" * 80)
    message = only_error(validate(new, None), "spec.agent.socketDir: ")
    assert "agent.sock" in message and "at most 107" in message
    native = changed(body(), "agent", socketDir="/var/run/" + "d" * 80)
    assert validate(native, None) == []


@pytest.mark.parametrize(
    ("before", "after", "allowed"),
    [
        (None, ["ReadWriteMany"], True),
        (["ReadWriteMany"], ["ReadWriteMany"], True),
        (["ReadWriteMany"], ["ReadWriteOnce"], False),
        (None, ["ReadWriteOnce"], False),
    ],
)
def test_access_modes_cannot_change(before: list[str] | None, after: list[str], allowed: bool) -> None:
    old = changed(body(), "storage", accessModes=before)
    errors = validate(changed(old, "storage", accessModes=after), old)
    if allowed:
        assert errors == []
    else:
        assert "was [ReadWriteMany], now [ReadWriteOnce]" in only_error(errors, "spec.storage.accessModes")


@pytest.mark.parametrize(
    ("before", "after", "allowed"),
    [("2Ti", "3Ti", True), ("2Ti", "2048Gi", True), ("2Ti", 2 * 1024**4, True), ("2Ti", "1Ti", False)],
)
def test_storage_size_may_grow_but_not_shrink(before: str, after: Any, allowed: bool) -> None:
    old = changed(body(), "storage", size=before)
    new = changed(old, "storage", size=after)
    errors = validate(new, old)
    if allowed:
        assert errors == []
    else:
        message = only_error(errors, "spec.storage.size cannot shrink (was 2Ti, now 1Ti)")
        assert "capacity.maxBytes" in message


def adopted(claim: str) -> dict[str, Any]:
    return changed(body(), "storage", existingClaim=claim, size=None, storageClassName=None)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (adopted("shared-kv"), body(), "cannot be removed (was 'shared-kv')"),
        (body(), adopted("shared-kv"), "already uses the claim 'tieredkv-llama3-cache' it created"),
        (adopted("shared-kv"), adopted("other-kv"), "cannot change from 'shared-kv' to 'other-kv'"),
    ],
)
def test_switching_the_existing_claim_is_denied(
    old: dict[str, Any], new: dict[str, Any], expected: str
) -> None:
    assert expected in only_error(validate(new, old), "spec.storage.existingClaim")


def test_the_storage_class_of_a_created_claim_cannot_change() -> None:
    old = changed(body(), "storage", storageClassName="nfs-rwx")
    errors = validate(changed(old, "storage", storageClassName="fast-rwx"), old)
    assert "was 'nfs-rwx', now 'fast-rwx'" in only_error(errors, "spec.storage.storageClassName")


def test_switching_vllm_mode_and_other_fields_is_allowed() -> None:
    old = body()
    assert validate(changed(old, "vllm", mode="agent", cpuBytes="48Gi"), old) == []


def test_changes_that_orphan_the_stored_blocks_need_the_allow_orphaning_annotation() -> None:
    old = body()
    new = changed(old, "vllm", version="0.32", hashAlgo="xxhash")
    new["spec"]["storage"]["subPath"] = "llama3-8b-v032"
    new["spec"]["hashSeed"] = {"value": "42"}
    refused = [e.split(" ")[0] for e in validate(new, old)]
    assert refused == ["spec.storage.subPath", "spec.hashSeed", "spec.vllm.hashAlgo", "spec.vllm.version"]
    new["metadata"]["annotations"] = {"tieredkv.io/allow-orphaning": "true"}
    assert validate(new, old) == []


def test_a_metadata_only_update_of_an_invalid_object_is_admitted_so_it_stays_deletable() -> None:
    old = changed(body(), "vllm", version="0.40")
    new = copy.deepcopy(old)
    new["metadata"]["finalizers"] = []
    assert validate(new, old) == []
    deleting = changed(old, "vllm", cpuBytes="1Gi")
    deleting["metadata"]["deletionTimestamp"] = "2026-09-01T00:00:00Z"
    assert validate(deleting, old) == []


def test_an_update_reports_spec_errors_and_immutable_violations_together() -> None:
    old = body()
    new = changed(old, "vllm", version="0.40")
    new["spec"]["storage"]["size"] = "1Ti"
    errors = validate(new, old)
    assert [e.split(":")[0].split(" ")[0] for e in errors] == [
        "spec.vllm.version",
        "spec.storage.size",
        "spec.vllm.version",
    ]
