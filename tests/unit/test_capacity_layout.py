"""Which names belong to the block layout: everything else on a volume is unknown and never deleted."""

import pytest

from tieredkv_agent.capacity import layout
from tieredkv_agent.capacity.layout import Kind
from tieredkv_agent.store.naming import KvCacheGroup, RunConfig, block_path, make_offload_key, namespace_for

pytestmark = pytest.mark.unit

H = "6358e31578a64b75ebe28cdb99d3beae65de82a2087321dc6ec84ae048faaaa6"


def test_paths_built_by_the_store_naming_are_recognised_at_every_level() -> None:
    config = RunConfig("meta-llama/Meta-Llama-3-8B-Instruct", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0",)),))
    ns = namespace_for("/vol", config)
    path = block_path(ns.blocks_dir, make_offload_key(bytes.fromhex(H), 3))
    blocks_dir, prefix, leaf, name = path.removeprefix("/vol/").split("/")
    assert layout.is_blocks_dir(blocks_dir) and layout.namespace_base(blocks_dir) == ns.config_dir.name
    assert layout.is_config_dir(ns.config_dir.name) and not layout.is_blocks_dir(ns.config_dir.name)
    assert layout.is_prefix_dir(prefix) and layout.is_leaf_dir(leaf)
    assert layout.classify_leaf_file(layout.leaf_stem(prefix, leaf), name) is Kind.BLOCK


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        (f"{H}.bin", Kind.BLOCK),
        (f"{H}.bin_8812736451234567893.tmp", Kind.TEMP),
        (f"{H}.bin.tmp", Kind.UNKNOWN),
        (f"{H}.BIN", Kind.UNKNOWN),
        (f"{H.upper()}.bin", Kind.UNKNOWN),
        (f"{H}.bin\n", Kind.UNKNOWN),
        (f"{H}.bin_12x.tmp", Kind.UNKNOWN),
        ("63591.bin", Kind.UNKNOWN),
        ("notes.txt", Kind.UNKNOWN),
        ("config.json", Kind.UNKNOWN),
    ],
)
def test_a_leaf_file_is_a_block_or_temp_only_if_its_hash_matches_its_directories(
    name: str, kind: Kind
) -> None:
    assert layout.classify_leaf_file(layout.leaf_stem("635", "8e_g0"), name) is kind


@pytest.mark.parametrize(
    ("name", "base", "blocks"),
    [
        ("m_0123456789ab", "m_0123456789ab", False),
        ("m_0123456789ab_r0", "m_0123456789ab", True),
        ("a_b_x_0123456789ab_r12", "a_b_x_0123456789ab", True),
        ("m_0123456789ab_r0_fedcba987654", "m_0123456789ab_r0_fedcba987654", False),
        ("m_0123456789AB_r0", None, False),
        ("m_0123456789a_r0", None, False),
        ("lost+found", None, False),
        ("_0123456789ab", None, False),
    ],
)
def test_namespace_directories_are_told_apart_by_digest_and_rank_suffix(
    name: str, base: str | None, blocks: bool
) -> None:
    assert layout.namespace_base(name) == base
    assert layout.is_blocks_dir(name) is blocks


def test_probe_files_are_temps_but_other_dot_files_are_not() -> None:
    assert layout.is_probe_temp(".o_direct_probe_1234567.tmp")
    assert layout.is_probe_temp(".o_direct_probe_ab12_cd.tmp")
    assert not layout.is_probe_temp(".o_direct_probe_1.tmp.keep")
    assert not layout.is_probe_temp(layout.LOCK_FILE_NAME)
    assert not layout.is_prefix_dir("6g5") and not layout.is_leaf_dir("8e_gx")
