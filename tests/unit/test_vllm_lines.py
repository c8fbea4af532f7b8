"""The one vLLM line table, seen from both sides: for every line the operator renders, the agent names and
hashes blocks the way that line's vLLM does, and the plugin answers to the tier entry the operator writes.

The operator and the agent never import each other; this test imports both and checks that their views of
each line agree, and pins the facts the table records against the vLLM sources they were read from.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest

from tieredkv_agent.api.protocol import none_hash_fingerprint
from tieredkv_agent.config import AgentSettings
from tieredkv_agent.service import expected_fingerprint
from tieredkv_agent.store.hashing import (
    HashAlgo,
    SeedRule,
    UnshareableNoneHashError,
    none_hash,
    none_hash_for_env,
)
from tieredkv_agent.store.naming import (
    FieldSchema,
    KvCacheGroup,
    RunConfig,
    parse_vllm_release,
    run_config_fields,
)
from tieredkv_common import vllm_facts
from tieredkv_common.vllm_lines import LINES, line_for_release
from tieredkv_operator.names import CacheRef
from tieredkv_operator.resources.agents import agent_env
from tieredkv_operator.resources.vllm_config import render_kv_transfer_config
from tieredkv_operator.spec import TieredKVCacheSpec, VllmMode
from tieredkv_operator.spec_vllm import HashAlgo as OperatorHashAlgo
from tieredkv_operator.vllm_lines import supported_lines, vllm_line

pytestmark = pytest.mark.unit

SEED = "1234"


def spec(line: str, mode: VllmMode, algo: str = "sha256") -> TieredKVCacheSpec:
    return TieredKVCacheSpec.model_validate(
        {
            "storage": {"size": "1Ti"},
            "vllm": {
                "selector": {"matchLabels": {"app": "x"}},
                "version": line,
                "mode": mode,
                "cpuBytes": "1Gi",
                "hashAlgo": algo,
            },
        }
    )


def tier_entry(line: str, mode: VllmMode) -> dict[str, Any]:
    rendered: Any = render_kv_transfer_config(spec(line, mode), name="c", namespace="ns")
    entry: dict[str, Any] = rendered["kv_connector_extra_config"]["secondary_tiers"][0]
    return entry


def test_the_operator_accepts_exactly_the_lines_the_agent_and_the_plugin_know() -> None:
    assert supported_lines() == tuple(LINES)
    for line in supported_lines():
        assert parse_vllm_release(line) == vllm_line(line).release
        assert line_for_release(f"{line}.3").line == line
        assert line_for_release(f"v{line}.0rc1+cu128").line == line


def test_the_hash_algorithms_are_the_same_four_for_the_operator_the_agent_and_every_line() -> None:
    operator_view = {algo.value for algo in OperatorHashAlgo}
    agent_view = {algo.value: algo.digest_size for algo in HashAlgo}
    assert operator_view == set(agent_view) == set(vllm_facts.HASH_DIGEST_BYTES)
    assert agent_view == vllm_facts.HASH_DIGEST_BYTES
    assert all(set(row.hash_algos) == operator_view for row in LINES.values())


@pytest.mark.parametrize("line", supported_lines())
def test_the_native_tier_the_operator_renders_is_the_fs_tier_of_the_line_the_agent_names_blocks_for(
    line: str,
) -> None:
    row = vllm_line(line)
    entry = tier_entry(line, VllmMode.NATIVE)
    assert entry["type"] == row.fs_tier_type
    assert set(entry) == {"type", *vllm_facts.FS_TIER_KEYS}
    schema = FieldSchema.for_vllm(f"{line}.0")
    assert schema is row.field_schema
    fields = run_config_fields(RunConfig("m", 16, 1, "auto", (KvCacheGroup(16, ("l0",)),), schema=schema))
    names = row.naming
    assert {names.tokens_per_hash, names.blocks_per_file} <= set(fields)
    assert set(fields["kv_cache_groups"][0]) == {names.group_tokens_per_block, "layer_names"}  # type: ignore[index]
    assert ("parallel_agnostic" in fields) is names.markers


@pytest.mark.parametrize("line", supported_lines())
def test_the_agent_mode_tier_the_operator_renders_is_the_one_the_plugin_provides(line: str) -> None:
    entry = tier_entry(line, VllmMode.AGENT)
    plugin = importlib.import_module(vllm_facts.AGENT_TIER_MODULE)
    if vllm_line(line).tier_module_path:
        assert getattr(importlib.import_module(entry["module_path"]), entry["type"]) is plugin.TieredKVTier
    else:
        assert "module_path" not in entry
        assert entry["type"] == plugin.TIER_TYPE
    arguments = set(entry) - {"type", "module_path"}
    assert arguments == set(vllm_facts.AGENT_TIER_KEYS)
    assert arguments <= set(inspect.signature(plugin.TieredKVTier.__init__).parameters)


@pytest.mark.parametrize("algo", [algo.value for algo in OperatorHashAlgo])
@pytest.mark.parametrize("line", supported_lines())
def test_the_agent_expects_the_none_hash_of_the_seed_the_operator_injects_on_every_line(
    line: str, algo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = agent_env(CacheRef("c", "ns", "uid"), spec(line, VllmMode.AGENT, algo), None, "0" * 16)
    for variable in env:
        if "value" in variable:
            monkeypatch.setenv(variable["name"], variable["value"])
    monkeypatch.setenv("PYTHONHASHSEED", SEED)
    settings = AgentSettings()
    assert settings.vllm_version == line and settings.hash_algo == algo
    assert expected_fingerprint(settings) == none_hash_fingerprint(none_hash(HashAlgo(algo), SEED))


@pytest.mark.parametrize("algo", list(HashAlgo))
@pytest.mark.parametrize("line", supported_lines())
def test_without_a_seed_the_agent_follows_the_lines_seeding_rule(line: str, algo: HashAlgo) -> None:
    rule = SeedRule.for_vllm(f"{line}.1")
    assert rule is vllm_line(line).seed_rule
    defaulted = rule is SeedRule.DEFAULT_WHEN_UNSET and algo.value in vllm_facts.DEFAULT_SEEDED_ALGOS
    if defaulted:
        assert none_hash_for_env(algo, rule, {}) == none_hash(algo, vllm_facts.DEFAULT_NONE_HASH_SEED)
    else:
        with pytest.raises(UnshareableNoneHashError):
            none_hash_for_env(algo, rule, {})


def test_the_table_keeps_the_boundaries_read_from_vllms_releases() -> None:
    def lines(predicate: Any) -> list[str]:
        return [line for line, row in LINES.items() if predicate(row)]

    assert lines(lambda row: row.fs_tier_type == "fs_python") == ["0.22"]
    assert lines(lambda row: not row.tier_module_path) == ["0.22", "0.23", "0.24", "0.25", "0.26", "0.27"]
    assert lines(lambda row: row.field_schema is FieldSchema.LEGACY) == ["0.22", "0.23", "0.24", "0.25"]
    assert lines(lambda row: row.seed_rule is SeedRule.RANDOM_WHEN_UNSET)[-1] == "0.28"
    assert lines(lambda row: not row.tier_api.lookup_result)[-1] == "0.24"
    assert lines(lambda row: row.tier_api.finished_jobs_method == "get_finished") == ["0.22"]
    assert lines(lambda row: not row.tier_api.on_new_request) == ["0.22"]
    assert lines(lambda row: row.verified) == ["0.32", "0.33", "0.34"]


def test_line_0_34_drops_touch_and_adds_deferred_release_and_the_single_node_rule() -> None:
    before, after = LINES["0.33"].tier_api, LINES["0.34"].tier_api
    assert before.touch and not after.touch
    assert not before.deferred_release and after.deferred_release
    assert not before.single_node_secondary_tiers and after.single_node_secondary_tiers
    assert before.job_slot_field == after.job_slot_field == "chunk_ids"
    assert before.default_offload_policy == after.default_offload_policy == "CHUNK_LEVEL"
    assert after.async_lookup_manager and after.backpressure_detector
    assert after.job_result_fields == (
        "job_id",
        "success",
        "successful_keys",
        "transfer_time",
        "transfer_bytes",
        "deferred_release",
    )
    assert LINES["0.34"].extra_config_keys == LINES["0.33"].extra_config_keys
    assert "tier_poll_interval_s" in LINES["0.33"].extra_config_keys - LINES["0.32"].extra_config_keys


def test_every_line_reads_the_keys_tieredkv_renders() -> None:
    rendered_keys = vllm_facts.RENDERED_EXTRA_CONFIG_KEYS
    assert all(row.extra_config_keys >= rendered_keys for row in LINES.values())
    rendered: Any = render_kv_transfer_config(spec("0.34", VllmMode.AGENT), name="c", namespace="ns")
    assert set(rendered["kv_connector_extra_config"]) == rendered_keys - {"block_size"}  # no blockSize set
