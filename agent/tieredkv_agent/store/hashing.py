"""vLLM's prefix-cache block hashes: the four algorithms, NONE_HASH and the chain over token blocks.

Pure and thread-safe; the agent's I/O worker threads and its API thread may call any of it. The
bytes hashed are exactly vLLM's: pickle protocol 5 (sha256, xxhash) or canonical CBOR (the `_cbor`
variants) of `(parent_hash, tuple(token_ids), extra_keys)`, with NONE_HASH as the first parent.

NONE_HASH = hash(seed), where the seed is the PYTHONHASHSEED *string* of the vLLM process. What
happens when PYTHONHASHSEED is unset depends on the release line (`SeedRule`, a column of the line table in
`tieredkv_common.vllm_lines`); when vLLM picks a random seed, no other process can name its blocks and
`none_hash_for_env` refuses.
"""

import enum
import hashlib
import operator
import pickle
from collections.abc import Callable, Mapping, Sequence

import cbor2
import xxhash

from tieredkv_common import vllm_facts
from tieredkv_common.vllm_facts import DEFAULT_NONE_HASH_SEED, SeedRule

__all__ = [
    "DEFAULT_NONE_HASH_SEED",
    "PICKLE_PROTOCOL",
    "ExtraKeys",
    "HashAlgo",
    "SeedRule",
    "UnshareableNoneHashError",
    "block_hashes",
    "hash_block_tokens",
    "hash_object",
    "none_hash",
    "none_hash_for_env",
    "none_hash_seed",
]

PICKLE_PROTOCOL = 5
"""`pickle.HIGHEST_PROTOCOL` on every Python vLLM supports (3.10 … 3.13); pinned so it cannot drift."""

ExtraKeys = tuple[object, ...] | None
"""Per-block extra keys (LoRA, multimodal, cache salt, prompt embeds) exactly as vLLM builds them."""


class HashAlgo(enum.Enum):
    """`--prefix-caching-hash-algo` values (the line table's `HASH_DIGEST_BYTES`)."""

    SHA256 = "sha256"
    SHA256_CBOR = "sha256_cbor"
    XXHASH = "xxhash"
    XXHASH_CBOR = "xxhash_cbor"

    @property
    def digest_size(self) -> int:
        """Bytes per block hash: 32 for the sha256 variants, 16 for xxh3-128."""
        return vllm_facts.HASH_DIGEST_BYTES[self.value]


class UnshareableNoneHashError(ValueError):
    """The vLLM process draws a random NONE_HASH, so its block names cannot be reproduced."""


def _pickled(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=PICKLE_PROTOCOL)


def _cbor(obj: object) -> bytes:
    return cbor2.dumps(obj, canonical=True)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


_SERIALIZERS: dict[HashAlgo, tuple[Callable[[object], bytes], Callable[[bytes], bytes]]] = {
    HashAlgo.SHA256: (_pickled, _sha256),
    HashAlgo.SHA256_CBOR: (_cbor, _sha256),
    HashAlgo.XXHASH: (_pickled, xxhash.xxh3_128_digest),
    HashAlgo.XXHASH_CBOR: (_cbor, xxhash.xxh3_128_digest),
}


def hash_object(algo: HashAlgo, obj: object) -> bytes:
    """vLLM's `hash_fn(obj)` for `algo`: the digest of the pickled or CBOR-encoded object."""
    serialize, digest = _SERIALIZERS[algo]
    return digest(serialize(obj))


def none_hash_seed(algo: HashAlgo, rule: SeedRule, pythonhashseed: str | None) -> str | None:
    """The seed string vLLM hashes into NONE_HASH, or None when vLLM would pick a random one.

    A set value is used verbatim, even `""` or `"random"`; `"0"` and `"00"` are different seeds.
    """
    return vllm_facts.none_hash_seed(rule, algo.value, pythonhashseed)


def none_hash(algo: HashAlgo, seed: str) -> bytes:
    """NONE_HASH for a seed string: the parent hash of every request's first block."""
    return hash_object(algo, seed)


def none_hash_for_env(algo: HashAlgo, rule: SeedRule, environ: Mapping[str, str]) -> bytes:
    """NONE_HASH of a vLLM process started with `environ`; UnshareableNoneHashError if it is random."""
    seed = none_hash_seed(algo, rule, environ.get("PYTHONHASHSEED"))
    if seed is None:
        raise UnshareableNoneHashError(
            f"vLLM ({rule.value}, {algo.value}) draws a random NONE_HASH when PYTHONHASHSEED is unset; "
            "set PYTHONHASHSEED to the same string on every instance"
        )
    return none_hash(algo, seed)


def hash_block_tokens(
    algo: HashAlgo,
    none_hash_value: bytes,
    parent_hash: bytes | None,
    token_ids: Sequence[int],
    extra_keys: ExtraKeys = None,
) -> bytes:
    """One chained block hash: hash((parent or NONE_HASH, tuple(token_ids), extra_keys or None)).

    Token ids must be integers (numpy integers are accepted and converted: they pickle differently);
    an empty `extra_keys` tuple is hashed as None, as vLLM never passes an empty tuple.
    """
    parent = bytes(parent_hash) if parent_hash else none_hash_value
    tokens = tuple(map(operator.index, token_ids))
    return hash_object(algo, (parent, tokens, extra_keys or None))


def block_hashes(
    algo: HashAlgo,
    none_hash_value: bytes,
    token_ids: Sequence[int],
    tokens_per_hash: int,
    extra_keys: Sequence[ExtraKeys] | None = None,
) -> list[bytes]:
    """The chained hashes of every full `tokens_per_hash` block of `token_ids` (a partial tail has none).

    `extra_keys[i]`, if given, goes with block i (e.g. the cache salt only on block 0).
    """
    if tokens_per_hash < 1:
        raise ValueError("tokens_per_hash must be at least 1")
    hashes: list[bytes] = []
    parent: bytes | None = None
    for index in range(len(token_ids) // tokens_per_hash):
        start = index * tokens_per_hash
        extras = extra_keys[index] if extra_keys is not None and index < len(extra_keys) else None
        parent = hash_block_tokens(
            algo, none_hash_value, parent, token_ids[start : start + tokens_per_hash], extras
        )
        hashes.append(parent)
    return hashes
