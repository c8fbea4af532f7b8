"""Namespace directories, offload keys and block paths, checked against the reference golden vectors."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tieredkv_agent.store.hashing import HashAlgo, block_hashes, none_hash
from tieredkv_agent.store.naming import (
    FieldSchema,
    KvCacheGroup,
    RunConfig,
    block_path,
    block_relpath,
    chunk_offload_keys,
    config_json_text,
    ensure_namespace,
    make_offload_key,
    namespace_for,
    parse_vllm_release,
    run_config_fields,
    safe_model_name,
    split_offload_key,
)

pytestmark = pytest.mark.unit

LLAMA = "meta-llama/Meta-Llama-3-8B-Instruct"
LLAMA_GROUPS = (KvCacheGroup(16, tuple(f"model.layers.{i}.self_attn.attn" for i in range(32))),)


def filemapper_test_config() -> RunConfig:
    """The fields of vLLM's own tests/v1/kv_offload/test_file_mapper.py."""
    return RunConfig(
        model_name="test-model", tokens_per_hash=16, blocks_per_file=1, dtype="float16", kv_cache_groups=()
    )


def llama_config(**overrides: Any) -> RunConfig:
    """Llama-3-8B-Instruct, bf16, 16-token blocks, one block per file, TP=1 (vLLM 0.33 default runner)."""
    base = RunConfig(
        model_name=LLAMA,
        tokens_per_hash=16,
        blocks_per_file=1,
        dtype="bfloat16",
        kv_cache_groups=LLAMA_GROUPS,
    )
    return replace(base, **overrides)


def test_the_vllm_file_mapper_golden_path_is_reproduced() -> None:
    namespace = namespace_for("/tmp/cache", filemapper_test_config(), rank=3)
    key = bytes(range(8)) + (2).to_bytes(4, "big")
    assert namespace.block_path(key) == "/tmp/cache/test-model_de3bba26cf36_r3/000/10_g2/0001020304050607.bin"


@pytest.mark.parametrize(
    ("config", "digest"),
    [
        pytest.param(llama_config(), "bf4ddeb634d2", id="0.33-default-tp1"),
        pytest.param(llama_config(tp_size=2), "7d5ef057e9e6", id="0.33-default-tp2"),
        pytest.param(llama_config(parallel_agnostic=True), "720291c3000d", id="parallel-agnostic"),
        pytest.param(
            llama_config(dtype="auto", schema=FieldSchema.LEGACY), "d0d1449fad1c", id="legacy-0.22-0.25"
        ),
    ],
)
def test_the_llama_worked_examples_have_the_golden_digests(config: RunConfig, digest: str) -> None:
    namespace = namespace_for("/mnt/kv", config)
    assert namespace.digest == digest
    assert namespace.blocks_dir == Path(f"/mnt/kv/meta-llama_Meta-Llama-3-8B-Instruct_{digest}_r0")
    assert namespace.config_dir == Path(f"/mnt/kv/meta-llama_Meta-Llama-3-8B-Instruct_{digest}")


def test_the_full_golden_file_path_of_the_first_sixteen_tokens_is_reproduced() -> None:
    first_hash = block_hashes(HashAlgo.SHA256, none_hash(HashAlgo.SHA256, "0"), list(range(16)), 16)[0]
    [key] = chunk_offload_keys([first_hash], hashes_per_chunk=1, group_idx=0)
    assert namespace_for("/mnt/kv", llama_config()).block_path(key) == (
        "/mnt/kv/meta-llama_Meta-Llama-3-8B-Instruct_bf4ddeb634d2_r0/635/8e_g0/"
        "6358e31578a64b75ebe28cdb99d3beae65de82a2087321dc6ec84ae048faaaa6.bin"
    )


def test_parallel_agnostic_configs_collapse_parallel_sizes_and_rank() -> None:
    agnostic_tp1 = namespace_for("/r", llama_config(parallel_agnostic=True), rank=5)
    agnostic_tp4 = namespace_for("/r", llama_config(parallel_agnostic=True, tp_size=4, pp_size=2))
    assert agnostic_tp1 == agnostic_tp4
    assert agnostic_tp1.blocks_dir.name.endswith("_r0")
    assert "parallel_agnostic" not in agnostic_tp1.fields


def test_the_current_schema_marks_non_agnostic_replicated_and_canonical_layouts() -> None:
    fields = run_config_fields(llama_config(replicated_layout=True, canonical_format="v1-nhd"))
    assert fields["parallel_agnostic"] is False
    assert fields["replicated_layout"] is True
    assert fields["canonical_format"] == "v1-nhd"
    plain = run_config_fields(llama_config(parallel_agnostic=True))
    assert not {"parallel_agnostic", "replicated_layout", "canonical_format"} & plain.keys()


def test_the_legacy_schema_uses_the_old_field_names_and_no_markers() -> None:
    fields = run_config_fields(llama_config(dtype="auto", schema=FieldSchema.LEGACY))
    assert set(fields) == {
        "model_name",
        "hash_block_size",
        "gpu_blocks_per_file",
        "tp_size",
        "pp_size",
        "pcp_size",
        "dcp_size",
        "dtype",
        "kv_cache_groups",
        "inference_engine",
    }
    groups = fields["kv_cache_groups"]
    assert isinstance(groups, list)
    assert set(groups[0]) == {"block_size", "layer_names"}


def test_the_legacy_schema_rejects_layout_markers_it_does_not_have() -> None:
    with pytest.raises(ValueError, match="legacy"):
        llama_config(schema=FieldSchema.LEGACY, replicated_layout=True)


def test_a_torch_prefix_on_the_dtype_is_dropped() -> None:
    assert run_config_fields(llama_config(dtype="torch.bfloat16")) == run_config_fields(llama_config())


def test_only_slashes_are_replaced_in_the_model_directory_name() -> None:
    assert safe_model_name("/models/org/My Model-v1.5:q") == "_models_org_My Model-v1.5:q"


@pytest.mark.parametrize(
    ("version", "schema"),
    [
        ("0.22.0", FieldSchema.LEGACY),
        ("0.25.1", FieldSchema.LEGACY),
        ("0.26.0", FieldSchema.CURRENT),
        ("0.28.0", FieldSchema.CURRENT),
        ("v0.33.0+cu128", FieldSchema.CURRENT),
    ],
)
def test_each_vllm_release_line_maps_to_its_field_schema(version: str, schema: FieldSchema) -> None:
    assert FieldSchema.for_vllm(version) is schema


@pytest.mark.parametrize("version", ["0.21.9", "0.10.0", "latest", ""])
def test_releases_without_the_fs_tier_and_garbage_versions_are_refused(version: str) -> None:
    with pytest.raises(ValueError, match=r"vLLM"):
        parse_vllm_release(version)


def test_config_json_is_written_once_with_vllm_formatting(tmp_path: Path) -> None:
    namespace = namespace_for(tmp_path, filemapper_test_config())
    assert ensure_namespace(namespace) is True
    written = (namespace.config_dir / "config.json").read_text(encoding="ascii")
    assert written == (
        "{\n"
        '  "blocks_per_file": 1,\n'
        '  "dcp_size": 1,\n'
        '  "dtype": "float16",\n'
        '  "inference_engine": "vllm",\n'
        '  "kv_cache_groups": [],\n'
        '  "model_name": "test-model",\n'
        '  "parallel_agnostic": false,\n'
        '  "pcp_size": 1,\n'
        '  "pp_size": 1,\n'
        '  "tokens_per_hash": 16,\n'
        '  "tp_size": 1\n'
        "}"
    )


def test_an_existing_config_json_is_left_alone(tmp_path: Path) -> None:
    namespace = namespace_for(tmp_path, filemapper_test_config())
    namespace.config_dir.mkdir(parents=True)
    (namespace.config_dir / "config.json").write_text("{}", encoding="ascii")
    assert ensure_namespace(namespace) is False
    assert (namespace.config_dir / "config.json").read_text(encoding="ascii") == "{}"
    assert not namespace.blocks_dir.exists()


def test_non_ascii_model_names_are_escaped_in_the_digest_input() -> None:
    fields = run_config_fields(llama_config(model_name="modèle/ü"))
    assert config_json_text(fields).isascii()
    assert namespace_for("/r", llama_config(model_name="modèle/ü")).config_dir.name.startswith("modèle_ü_")


@given(block_hash=st.binary(min_size=3, max_size=64), group_idx=st.integers(0, 2**32 - 1))
def test_an_offload_key_splits_back_into_hash_and_group(block_hash: bytes, group_idx: int) -> None:
    key = make_offload_key(block_hash, group_idx)
    assert split_offload_key(key) == (block_hash, group_idx)
    h = block_hash.hex()
    assert block_relpath(key) == f"{h[:3]}/{h[3:5]}_g{group_idx}/{h}.bin"


def test_the_group_appears_only_in_the_second_level_directory() -> None:
    key = make_offload_key(bytes.fromhex("ABCDEF0123"), 7)
    assert block_path(Path("/root/ns_r0"), key) == "/root/ns_r0/abc/de_g7/abcdef0123.bin"


@pytest.mark.parametrize("key", [b"", b"\x00\x00\x00\x02"])
def test_a_key_without_a_hash_part_is_refused(key: bytes) -> None:
    with pytest.raises(ValueError, match="no block hash"):
        split_offload_key(key)


def test_a_chunk_is_keyed_by_its_last_block_hash_and_a_partial_chunk_has_no_key() -> None:
    hashes = [bytes([i]) * 4 for i in range(7)]
    keys = chunk_offload_keys(hashes, hashes_per_chunk=3, group_idx=1)
    assert keys == [make_offload_key(hashes[2], 1), make_offload_key(hashes[5], 1)]


def test_the_store_package_never_imports_torch() -> None:
    agent_dir = Path(__file__).resolve().parents[2] / "agent"
    probe = "import sys, tieredkv_agent.store; sys.exit('torch' in sys.modules)"
    subprocess.run([sys.executable, "-c", probe], check=True, env={"PYTHONPATH": str(agent_dir)})
