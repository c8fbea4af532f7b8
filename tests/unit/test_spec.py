"""The TieredKVCache spec model: defaults, wire names, cross-field rules and the documented examples."""

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tieredkv_operator import conditions
from tieredkv_operator.spec import (
    AccessMode,
    TieredKVCache,
    TieredKVCacheSpec,
    VllmMode,
)
from tieredkv_operator.spec_vllm import HashAlgo
from tieredkv_operator.status_model import TieredKVCacheStatus
from tieredkv_operator.vllm_lines import supported_lines

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"

MINIMAL: dict[str, Any] = {
    "storage": {"size": "100Gi"},
    "vllm": {"selector": {"matchLabels": {"app": "vllm"}}, "version": "0.33", "cpuBytes": "8Gi"},
}


def spec_with(**sections: dict[str, Any]) -> dict[str, Any]:
    """The minimal spec with some sections' fields replaced (a value of None deletes the field)."""
    raw = copy.deepcopy(MINIMAL)
    for section, fields in sections.items():
        target = raw.setdefault(section, {})
        for key, value in fields.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    return raw


def rejection(raw: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        TieredKVCacheSpec.model_validate(raw)
    return str(info.value)


def test_a_minimal_spec_gets_every_default() -> None:
    spec = TieredKVCacheSpec.model_validate(MINIMAL)
    assert spec.storage.access_modes == [AccessMode.READ_WRITE_MANY]
    assert spec.storage.retain_on_delete is True
    assert spec.storage.sub_path is None
    assert spec.hash_seed.secret_ref is None and spec.hash_seed.value is None
    assert spec.vllm.container == "vllm"
    assert spec.vllm.mode is VllmMode.NATIVE
    assert spec.vllm.hash_algo is HashAlgo.SHA256
    assert spec.vllm.cpu_bytes == 8 * 1024**3
    assert spec.vllm.block_size is None
    assert (spec.vllm.native_read_threads, spec.vllm.native_write_threads) == (16, 16)
    assert spec.agent.socket_dir == "/var/run/tieredkv"
    assert spec.agent.ram_tier_bytes == 0
    assert (spec.agent.store_admission.threshold, spec.agent.store_admission.max_tracker_size) == (0, 64000)
    assert spec.capacity.max_bytes is None
    assert (spec.capacity.high_watermark, spec.capacity.low_watermark) == (0.9, 0.8)


def test_a_secret_ref_key_defaults_to_seed() -> None:
    spec = TieredKVCacheSpec.model_validate(spec_with(hashSeed={"secretRef": {"name": "my-seed"}}))
    assert spec.hash_seed.secret_ref is not None
    assert spec.hash_seed.secret_ref.key == "seed"


def test_the_spec_dumps_camel_case_and_validates_back_to_an_equal_model() -> None:
    example = yaml.safe_load((EXAMPLES / "cache-agent.yaml").read_text())
    spec = TieredKVCacheSpec.model_validate(example["spec"])
    dumped = spec.model_dump(mode="json")
    assert {"hashSeed", "storage", "vllm", "agent", "capacity", "events"} == set(dumped)
    assert "existingClaim" in dumped["storage"] and "cpuBytes" in dumped["vllm"]
    assert "storeAdmission" in dumped["agent"] and "maxTrackerSize" in dumped["agent"]["storeAdmission"]
    assert TieredKVCacheSpec.model_validate(dumped) == spec


def test_python_code_may_use_snake_case_names() -> None:
    spec = TieredKVCacheSpec.model_validate(
        spec_with(storage={"size": None, "existing_claim": "kv"}, vllm={"cpu_bytes": 1024, "cpuBytes": None})
    )
    assert spec.storage.existing_claim == "kv"
    assert spec.vllm.cpu_bytes == 1024


def test_storage_without_size_or_existing_claim_is_rejected() -> None:
    assert "either size (to create a claim) or existingClaim" in rejection(spec_with(storage={"size": None}))


def test_an_existing_claim_cannot_be_combined_with_size_or_storage_class() -> None:
    message = rejection(spec_with(storage={"existingClaim": "kv"}))
    assert "leave size and storageClassName unset" in message
    message = rejection(spec_with(storage={"size": None, "existingClaim": "kv", "storageClassName": "nfs"}))
    assert "leave size and storageClassName unset" in message


def test_the_low_watermark_must_be_below_the_high_watermark() -> None:
    message = rejection(spec_with(capacity={"highWatermark": 0.7, "lowWatermark": 0.7}))
    assert "capacity.lowWatermark (0.7) must be below capacity.highWatermark (0.7)" in message


def test_max_bytes_may_not_exceed_the_requested_size() -> None:
    message = rejection(spec_with(capacity={"maxBytes": "101Gi"}))
    assert "capacity.maxBytes (108447924224) exceeds storage.size (100Gi" in message


def test_a_seed_comes_from_a_secret_or_a_literal_not_both() -> None:
    message = rejection(spec_with(hashSeed={"secretRef": {"name": "s"}, "value": "42"}))
    assert "set secretRef or value, not both" in message


@pytest.mark.parametrize("seed", ["random", "", "-1", "4294967296", "12345678901"])
def test_a_literal_seed_must_be_one_python_accepts(seed: str) -> None:
    assert "hashSeed.value" in rejection(spec_with(hashSeed={"value": seed}))


def test_agent_data_path_settings_require_agent_mode() -> None:
    raw = spec_with(agent={"ramTierBytes": "1Gi", "storeAdmission": {"threshold": 2}})
    message = rejection(raw)
    assert "agent.ramTierBytes and agent.storeAdmission.threshold only act in the agent's" in message
    raw["vllm"]["mode"] = "agent"
    assert TieredKVCacheSpec.model_validate(raw).agent.ram_tier_bytes == 1024**3


def test_an_unknown_vllm_line_is_rejected_with_the_supported_lines() -> None:
    message = rejection(spec_with(vllm={"version": "0.40"}))
    assert f"supported lines: {', '.join(supported_lines())}" in message


def test_a_full_vllm_version_asks_for_the_release_line() -> None:
    assert "give major.minor, e.g. '0.33'" in rejection(spec_with(vllm={"version": "0.33.1"}))


@pytest.mark.parametrize("key", ["cpu_bytes_to_use", "secondary_tiers", "spec_name", "store_threshold"])
def test_extra_config_may_not_override_rendered_keys(key: str) -> None:
    message = rejection(spec_with(vllm={"extraConfig": {key: 1}}))
    assert f"vllm.extraConfig.{key} is managed by tieredkv" in message


def test_block_size_and_blocks_per_chunk_are_mutually_exclusive() -> None:
    raw = spec_with(vllm={"blockSize": 32, "extraConfig": {"blocks_per_chunk": 2}})
    assert "mutually exclusive" in rejection(raw)


def test_an_empty_selector_is_rejected() -> None:
    assert "empty selects every pod" in rejection(spec_with(vllm={"selector": {}}))


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ({"key": "a", "operator": "In"}, "operator In needs values"),
        ({"key": "a", "operator": "Exists", "values": ["x"]}, "operator Exists takes no values"),
    ],
)
def test_selector_expressions_must_match_their_operator(expression: dict[str, Any], message: str) -> None:
    assert message in rejection(spec_with(vllm={"selector": {"matchExpressions": [expression]}}))


@pytest.mark.parametrize(
    ("section", "fields"),
    [
        ("storage", {"sizee": "1Gi"}),
        ("vllm", {"cpu_bytes_to_use": 1}),
        ("agent", {"replicas": 3}),
        ("capacity", {"watermark": 0.5}),
        ("hashSeed", {"seed": "1"}),
    ],
)
def test_unknown_fields_are_rejected_in_every_section(section: str, fields: dict[str, Any]) -> None:
    assert "Extra inputs are not permitted" in rejection(spec_with(**{section: fields}))


def test_unknown_top_level_fields_are_rejected() -> None:
    assert "Extra inputs are not permitted" in rejection({**MINIMAL, "replicas": 1})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (spec_with(storage={"size": "10GB"}), "quantity '10GB' is not valid"),
        (spec_with(vllm={"cpuBytes": "0"}), "vllm.cpuBytes must be positive"),
        (spec_with(vllm={"cpuBytes": True}), "expected a Kubernetes quantity"),
        (spec_with(storage={"subPath": "/abs"}), "String should match pattern"),
        (spec_with(storage={"subPath": "a/../b"}), "without empty, '.' or '..' segments"),
        (spec_with(agent={"socketDir": "relative"}), "String should match pattern"),
        (spec_with(vllm={"container": "Bad_Name"}), "String should match pattern"),
        (spec_with(vllm={"mode": "sidecar"}), "Input should be 'native' or 'agent'"),
        (spec_with(vllm={"hashAlgo": "md5"}), "'sha256', 'sha256_cbor', 'xxhash' or 'xxhash_cbor'"),
    ],
)
def test_bad_field_values_are_rejected_with_a_clear_message(raw: dict[str, Any], message: str) -> None:
    assert message in rejection(raw)


def test_max_bytes_defaults_to_ninety_percent_of_the_volume() -> None:
    spec = TieredKVCacheSpec.model_validate(MINIMAL)
    assert spec.effective_max_bytes() == 90 * 1024**3
    assert spec.effective_max_bytes(volume_bytes=200 * 1024**3) == 180 * 1024**3
    adopted = TieredKVCacheSpec.model_validate(spec_with(storage={"size": None, "existingClaim": "kv"}))
    assert adopted.effective_max_bytes() is None
    assert adopted.effective_max_bytes(volume_bytes=1000) == 900
    explicit = TieredKVCacheSpec.model_validate(spec_with(capacity={"maxBytes": "10Gi"}))
    assert explicit.effective_max_bytes(volume_bytes=1000) == 10 * 1024**3


def test_max_bytes_of_a_tiny_volume_is_one_byte_not_zero_which_the_agent_refuses() -> None:
    spec = TieredKVCacheSpec.model_validate(spec_with(storage={"size": "1"}))
    assert spec.effective_max_bytes() == 1
    adopted = TieredKVCacheSpec.model_validate(spec_with(storage={"size": None, "existingClaim": "kv"}))
    assert adopted.effective_max_bytes(volume_bytes=0) == 1


def documented_caches(path: Path) -> list[dict[str, Any]]:
    """The TieredKVCache documents of an example file (the quickstart also holds other kinds)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == "TieredKVCache"]


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda path: path.name)
def test_every_documented_example_is_a_valid_tiered_kv_cache(example: Path) -> None:
    found = documented_caches(example)
    assert found, f"{example.name} holds no TieredKVCache"
    for doc in found:
        assert TieredKVCache.model_validate(doc).metadata["name"]


def test_both_modes_have_an_example() -> None:
    modes = {
        TieredKVCache.model_validate(doc).spec.vllm.mode
        for path in EXAMPLES.glob("*.yaml")
        for doc in documented_caches(path)
    }
    assert modes == set(VllmMode)


def test_status_ignores_fields_it_does_not_know() -> None:
    status = TieredKVCacheStatus.model_validate(
        {
            "phase": "Ready",
            "agents": {"desired": 3, "ready": 2},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Reconciled",
                    "lastTransitionTime": "2026-11-22T04:00:00Z",
                }
            ],
            "futureField": 1,
        }
    )
    assert status.agents.ready == 2
    assert status.conditions[0].reason == conditions.RECONCILED


def test_condition_reasons_are_unique_camel_case_words() -> None:
    assert len(set(conditions.REASONS)) == len(conditions.REASONS)
    assert all(re.fullmatch(r"[A-Z][a-z]+(?:[A-Z][a-z]+)*", reason) for reason in conditions.REASONS)
