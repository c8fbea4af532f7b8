"""Native mode with real engines: separate vLLM processes share prompt KV through vLLM's own `fs` tier.

Engines run one after another (each its own process, as separate pods would), on the CPU platform with
tieredkv's CPU offloading worker, a tiny seeded Llama and a 512-token prompt. Engine runs are module-scoped
and shared between the assertions; the whole module starts four engines.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.vllm.conftest import BLOCK_SIZE, Runner, native_kv_config
from tieredkv_agent.store import hashing, naming
from tieredkv_devcluster.vllm_model import TinyLlama, prompt_tokens

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1800)]

PROMPT_LEN = 512
PROMPT = prompt_tokens(PROMPT_LEN, seed=1)
SHAPE = TinyLlama()
BLOCK_FILE_BYTES = (
    SHAPE.num_layers * 2 * BLOCK_SIZE * SHAPE.num_kv_heads * (SHAPE.hidden_size // SHAPE.num_heads) * 4
)
"""One chunk row: K and V of every layer for 32 tokens, float32 (32 KiB, already page-aligned)."""


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("native-store")


@pytest.fixture(scope="module")
def engine_a(
    run_engine: Runner, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The first engine: computes the prompt and stores its blocks."""
    return run_engine(tmp_path_factory.mktemp("engine-a"), [PROMPT], native_kv_config(shared_dir))


@pytest.fixture(scope="module")
def snapshot_a(engine_a: dict[str, Any], shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared directory as engine A left it (later engines add files to the original)."""
    root = tmp_path_factory.mktemp("snapshot-a") / "store"
    shutil.copytree(shared_dir, root)
    return root


@pytest.fixture(scope="module")
def engine_b(
    snapshot_a: Path, run_engine: Runner, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A second engine process, same seed and directory, started after the first has exited (and after
    the snapshot of what the first left behind)."""
    return run_engine(tmp_path_factory.mktemp("engine-b"), [PROMPT], native_kv_config(shared_dir))


@pytest.fixture(scope="module")
def engine_other_seed(
    engine_b: dict[str, Any], run_engine: Runner, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """An engine with another PYTHONHASHSEED on the same directory."""
    return run_engine(
        tmp_path_factory.mktemp("engine-seed1"), [PROMPT], native_kv_config(shared_dir), hash_seed="1"
    )


@pytest.fixture(scope="module")
def engine_zeroed(
    snapshot_a: Path, run_engine: Runner, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """An engine over a copy of engine A's files in which every block file was zeroed (same size)."""
    root = tmp_path_factory.mktemp("zeroed") / "store"
    shutil.copytree(snapshot_a, root)
    files = sorted(root.rglob("*.bin"))
    assert len(files) == PROMPT_LEN // BLOCK_SIZE
    for path in files:
        path.write_bytes(bytes(path.stat().st_size))
    return run_engine(tmp_path_factory.mktemp("engine-zeroed"), [PROMPT], native_kv_config(root))


def test_the_first_engine_computes_the_prompt_and_stores_every_full_chunk(
    engine_a: dict[str, Any], shared_dir: Path
) -> None:
    (prompt,) = engine_a["prompts"]
    assert prompt["cached_by_source"] == {}
    assert len(prompt["output_token_ids"]) == 16
    assert engine_a["settled_files"] == {str(shared_dir): PROMPT_LEN // BLOCK_SIZE}
    assert engine_a["leaked_shm"] == []


def test_a_second_engine_reports_the_shared_prompt_as_cached_from_disk(engine_b: dict[str, Any]) -> None:
    (prompt,) = engine_b["prompts"]
    disk = prompt["cached_by_source"].get("disk", 0)
    assert disk == PROMPT_LEN, prompt
    assert set(prompt["cached_by_source"]) == {"disk"}
    assert engine_b["cached_by_source"] == {"disk": PROMPT_LEN}


def test_the_second_engine_produces_the_same_tokens_as_the_first(
    engine_a: dict[str, Any], engine_b: dict[str, Any]
) -> None:
    assert engine_b["prompts"][0]["output_token_ids"] == engine_a["prompts"][0]["output_token_ids"]


def test_an_engine_with_another_hash_seed_shares_nothing(
    engine_a: dict[str, Any], engine_other_seed: dict[str, Any], shared_dir: Path
) -> None:
    (prompt,) = engine_other_seed["prompts"]
    assert prompt["cached_by_source"].get("disk", 0) == 0
    assert engine_other_seed["python_hash_seed"] == "1"
    # Recomputed from the same weights and tokens: the output does not depend on the seed ...
    assert prompt["output_token_ids"] == engine_a["prompts"][0]["output_token_ids"]
    # ... and its blocks were stored under names of their own, next to seed 0's.
    assert engine_other_seed["settled_files"] == {str(shared_dir): 2 * PROMPT_LEN // BLOCK_SIZE}


def test_zeroed_block_files_are_loaded_and_change_the_output(
    engine_a: dict[str, Any], engine_zeroed: dict[str, Any]
) -> None:
    (prompt,) = engine_zeroed["prompts"]
    assert prompt["cached_by_source"].get("disk", 0) == PROMPT_LEN
    assert prompt["output_token_ids"] != engine_a["prompts"][0]["output_token_ids"]


def test_the_namespace_config_json_is_the_run_config_tieredkv_derives(
    snapshot_a: Path, tiny_model: Path
) -> None:
    namespace = _namespace(snapshot_a, tiny_model)
    assert [p.name for p in sorted(snapshot_a.iterdir())] == [
        namespace.config_dir.name,
        namespace.blocks_dir.name,
    ]
    written = json.loads((namespace.config_dir / "config.json").read_text())
    assert written == namespace.fields
    assert written["model_name"] == str(tiny_model)


def test_block_files_have_vllm_names_and_one_chunk_row_each(snapshot_a: Path, tiny_model: Path) -> None:
    namespace = _namespace(snapshot_a, tiny_model)
    none_hash = hashing.none_hash(hashing.HashAlgo.SHA256, "0")
    hashes = hashing.block_hashes(hashing.HashAlgo.SHA256, none_hash, PROMPT, BLOCK_SIZE)
    keys = naming.chunk_offload_keys(hashes, hashes_per_chunk=1, group_idx=0)
    expected = {Path(namespace.block_path(key)) for key in keys}
    found = set(namespace.blocks_dir.rglob("*.bin"))
    assert found == expected
    assert {p.stat().st_size for p in found} == {BLOCK_FILE_BYTES}
    assert not list(snapshot_a.rglob("*.tmp"))


def _namespace(root: Path, model: Path) -> naming.Namespace:
    """The namespace vLLM 0.32's fs tier uses for the tiny model, as tieredkv derives it (V1 model runner,
    so parallel-agnostic: no parallel sizes in the digest)."""
    run_config = naming.RunConfig(
        model_name=str(model),
        tokens_per_hash=BLOCK_SIZE,
        blocks_per_file=1,
        dtype="float32",
        kv_cache_groups=(
            naming.KvCacheGroup(
                BLOCK_SIZE, tuple(f"model.layers.{i}.self_attn.attn" for i in range(SHAPE.num_layers))
            ),
        ),
        parallel_agnostic=True,
    )
    return naming.namespace_for(root, run_config)
