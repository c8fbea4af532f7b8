"""Block hashes and NONE_HASH per algorithm and release line, checked against the reference golden vectors."""

import numpy as np
import pytest

from tieredkv_agent.store.hashing import (
    DEFAULT_NONE_HASH_SEED,
    HashAlgo,
    SeedRule,
    UnshareableNoneHashError,
    block_hashes,
    hash_block_tokens,
    none_hash,
    none_hash_for_env,
    none_hash_seed,
)

pytestmark = pytest.mark.unit

GOLDEN = [
    pytest.param(
        HashAlgo.SHA256,
        "0",
        "1973e23848344dc43a988a9b478663803cfffe1243480253f9a3cf004b14aa7c",
        "6358e31578a64b75ebe28cdb99d3beae65de82a2087321dc6ec84ae048faaaa6",
        id="sha256-seed0",
    ),
    pytest.param(
        HashAlgo.SHA256_CBOR,
        "0",
        "4e1195df020de59e0d65a33a4279f1183e7ae4e5d980e309f8b55adff2e61c3e",
        "d830de3d42c00f25a2949b5d12d98642664a44872c1614c5b0147556276afc9c",
        id="sha256_cbor-seed0",
    ),
    pytest.param(
        HashAlgo.XXHASH,
        "0",
        "6fb31cc38bba6066183f7f2104b9c051",
        "8ef953407c0da43eacbb3639ed2bff4d",
        id="xxhash-seed0",
    ),
    pytest.param(
        HashAlgo.XXHASH_CBOR,
        "0",
        "1ebe36576dcb573f26b99533a20aaeca",
        "209f5d549fc07c8e39d823615ede61ce",
        id="xxhash_cbor-seed0",
    ),
    pytest.param(
        HashAlgo.SHA256,
        "vllm-none-hash",
        "066b1e8987e027138e98701c46128929378935f9b6cd1549105ae6b4f0d71198",
        "fe8fa5dda3210d0ca2031e37cbe3b001186773cd1c710beb2d45fcb51d434798",
        id="sha256-default-seed",
    ),
    pytest.param(
        HashAlgo.SHA256_CBOR,
        "vllm-none-hash",
        "9bd96a485ad84efdafb72ee48a1d7a69bcead0f8f0433173941b276b9581eef0",
        "dc918a88b139e5afe60b88eda27508d4aee16c10fdc354791efea06206ac0749",
        id="sha256_cbor-default-seed",
    ),
]


@pytest.mark.parametrize(("algo", "seed", "golden_none_hash", "golden_first_block"), GOLDEN)
def test_none_hash_and_the_first_block_match_the_golden_values(
    algo: HashAlgo, seed: str, golden_none_hash: str, golden_first_block: str
) -> None:
    root = none_hash(algo, seed)
    assert root.hex() == golden_none_hash
    assert len(root) == algo.digest_size
    assert hash_block_tokens(algo, root, None, range(16)).hex() == golden_first_block


def test_the_second_sha256_block_chains_onto_the_first() -> None:
    hashes = block_hashes(HashAlgo.SHA256, none_hash(HashAlgo.SHA256, "0"), list(range(40)), 16)
    assert [h.hex() for h in hashes] == [
        "6358e31578a64b75ebe28cdb99d3beae65de82a2087321dc6ec84ae048faaaa6",
        "3c3c50f324aefbdfbb124dfdc541efac3e94e59c40f4be08afe70601eeca92c8",
    ]


def test_the_default_seed_is_the_documented_constant() -> None:
    assert DEFAULT_NONE_HASH_SEED == "vllm-none-hash"


@pytest.mark.parametrize("algo", list(HashAlgo))
def test_up_to_0_28_an_unset_pythonhashseed_means_a_random_none_hash(algo: HashAlgo) -> None:
    rule = SeedRule.for_vllm("0.28.2")
    assert none_hash_seed(algo, rule, None) is None
    with pytest.raises(UnshareableNoneHashError, match="PYTHONHASHSEED"):
        none_hash_for_env(algo, rule, {})


@pytest.mark.parametrize(
    ("algo", "seed"),
    [
        (HashAlgo.SHA256, DEFAULT_NONE_HASH_SEED),
        (HashAlgo.SHA256_CBOR, DEFAULT_NONE_HASH_SEED),
        (HashAlgo.XXHASH, None),
        (HashAlgo.XXHASH_CBOR, None),
    ],
)
def test_from_0_29_an_unset_pythonhashseed_means_the_default_seed_for_sha256_only(
    algo: HashAlgo, seed: str | None
) -> None:
    assert none_hash_seed(algo, SeedRule.for_vllm("0.29.0"), None) == seed


def test_from_0_29_sha256_with_pythonhashseed_unset_gets_the_golden_default_none_hash() -> None:
    root = none_hash_for_env(HashAlgo.SHA256, SeedRule.for_vllm("0.33.0"), {"HOME": "/root"})
    assert root.hex() == "066b1e8987e027138e98701c46128929378935f9b6cd1549105ae6b4f0d71198"


@pytest.mark.parametrize("rule", list(SeedRule))
@pytest.mark.parametrize("value", ["0", "00", "", "random"])
def test_a_set_pythonhashseed_is_hashed_verbatim_on_every_line(rule: SeedRule, value: str) -> None:
    environ = {"PYTHONHASHSEED": value}
    assert none_hash_seed(HashAlgo.XXHASH, rule, value) == value
    assert none_hash_for_env(HashAlgo.SHA256, rule, environ) == none_hash(HashAlgo.SHA256, value)


def test_seeds_are_strings_so_zero_and_double_zero_differ() -> None:
    assert none_hash(HashAlgo.SHA256, "0") != none_hash(HashAlgo.SHA256, "00")


def test_a_set_but_unseeded_instance_and_an_unset_one_do_not_share_names() -> None:
    rule = SeedRule.for_vllm("0.33.0")
    assert none_hash_for_env(HashAlgo.SHA256, rule, {"PYTHONHASHSEED": "0"}) != none_hash_for_env(
        HashAlgo.SHA256, rule, {}
    )


@pytest.mark.parametrize(
    ("version", "rule"),
    [
        ("0.22.0", SeedRule.RANDOM_WHEN_UNSET),
        ("0.28.9", SeedRule.RANDOM_WHEN_UNSET),
        ("0.29.0", SeedRule.DEFAULT_WHEN_UNSET),
        ("0.30.0", SeedRule.DEFAULT_WHEN_UNSET),
        ("0.33.0", SeedRule.DEFAULT_WHEN_UNSET),
    ],
)
def test_each_vllm_release_line_maps_to_its_seed_rule(version: str, rule: SeedRule) -> None:
    assert SeedRule.for_vllm(version) is rule


def test_a_partial_trailing_block_has_no_hash() -> None:
    root = none_hash(HashAlgo.SHA256, "0")
    assert len(block_hashes(HashAlgo.SHA256, root, list(range(47)), 16)) == 2
    assert block_hashes(HashAlgo.SHA256, root, list(range(15)), 16) == []


def test_numpy_token_ids_hash_like_python_ints() -> None:
    root = none_hash(HashAlgo.SHA256, "0")
    tokens = np.arange(32, dtype=np.int64)
    assert block_hashes(HashAlgo.SHA256, root, tokens, 16) == block_hashes(  # type: ignore[arg-type]
        HashAlgo.SHA256, root, list(range(32)), 16
    )


def test_an_empty_parent_counts_as_no_parent() -> None:
    root = none_hash(HashAlgo.SHA256, "0")
    assert hash_block_tokens(HashAlgo.SHA256, root, b"", range(16)) == hash_block_tokens(
        HashAlgo.SHA256, root, None, range(16)
    )


def test_empty_extra_keys_hash_like_none_and_real_extra_keys_change_the_chain() -> None:
    root = none_hash(HashAlgo.SHA256_CBOR, "0")
    tokens = list(range(32))
    plain = block_hashes(HashAlgo.SHA256_CBOR, root, tokens, 16)
    assert block_hashes(HashAlgo.SHA256_CBOR, root, tokens, 16, [(), ()]) == plain
    salted = block_hashes(HashAlgo.SHA256_CBOR, root, tokens, 16, [("cache_salt", "s")])
    assert salted[0] != plain[0]
    assert salted[1] != plain[1], "the salt on block 0 must propagate through the chain"
    assert salted[1] == hash_block_tokens(HashAlgo.SHA256_CBOR, root, salted[0], range(16, 32))


def test_a_non_positive_block_size_is_refused() -> None:
    with pytest.raises(ValueError, match="tokens_per_hash"):
        block_hashes(HashAlgo.SHA256, b"x", [1, 2], 0)
