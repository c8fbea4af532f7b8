"""The vocabulary of the vLLM line table: what can differ between vLLM release lines, and the constants that
do not (standard library only).

`vllm_lines` holds one `VllmLine` per supported release line built from these types. The constants name what
the operator renders into `--kv-transfer-config` and what the tier plugin answers to, so both sides read the
same strings.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

CONNECTOR: Final = "OffloadingConnector"
"""`kv_connector` of every rendered config."""
ROLE: Final = "kv_both"
SPEC_NAME: Final = "TieringOffloadingSpec"
"""`kv_connector_extra_config.spec_name`: the spec that reads `secondary_tiers`."""
RENDERED_EXTRA_CONFIG_KEYS: Final = frozenset(
    {"spec_name", "cpu_bytes_to_use", "block_size", "secondary_tiers"}
)
"""The `kv_connector_extra_config` keys tieredkv renders; every supported line reads them."""
FS_TIER_KEYS: Final = ("root_dir", "n_read_threads", "n_write_threads")
"""The keys of vLLM's own file-system tier entry tieredkv renders (0.22 and 0.23 accept no others)."""
AGENT_TIER_CLASS: Final = "TieredKVTier"
"""Class name of the tieredkv tier, loaded by `type` + `module_path` on lines that allow it."""
AGENT_TIER_MODULE: Final = "tieredkv_agent.vllm"
AGENT_TIER_PLUGIN_TYPE: Final = "tieredkv"
"""Tier type the tieredkv vLLM general plugin registers, for lines without `module_path`."""
CPU_SPEC_NAME: Final = "CPUTieringOffloadingSpec"
"""`spec_name` of tieredkv's CPU offloading worker (`tieredkv_agent.vllm_cpu`), for vLLM's CPU platform."""
CPU_SPEC_MODULE: Final = "tieredkv_agent.vllm_cpu"
"""`spec_module_path` of that spec; the pod needs tieredkv's plugin on its PYTHONPATH."""
AGENT_TIER_KEYS: Final = ("socket_path", "cache_namespace", "cache_name")
"""The keys of a tieredkv tier entry besides `type`/`module_path`: the tier's constructor arguments."""

DEFAULT_NONE_HASH_SEED: Final = "vllm-none-hash"
"""The seed vLLM >= 0.29 hashes into NONE_HASH for the sha256 algorithms when PYTHONHASHSEED is unset."""
HASH_DIGEST_BYTES: Final[dict[str, int]] = {"sha256": 32, "sha256_cbor": 32, "xxhash": 16, "xxhash_cbor": 16}
"""`--prefix-caching-hash-algo` values and the bytes of one block hash each gives."""
DEFAULT_SEEDED_ALGOS: Final = frozenset({"sha256", "sha256_cbor"})
"""Algorithms vLLM seeds with `DEFAULT_NONE_HASH_SEED` (not random) when PYTHONHASHSEED is unset."""


class FieldSchema(enum.Enum):
    """Which run-config field names feed vLLM's namespace digest (`FileMapper`)."""

    LEGACY = "legacy"
    """vLLM 0.22 … 0.25: `hash_block_size`, `gpu_blocks_per_file`, groups' `block_size`, no markers."""
    CURRENT = "current"
    """vLLM 0.26 on (read in the 0.28 and 0.32 … 0.34 wheels): `tokens_per_hash`, `blocks_per_file`,
    markers."""

    @classmethod
    def for_vllm(cls, version: str) -> FieldSchema:
        """The schema of a vLLM release such as "0.28.1" (its line's row in the table)."""
        from tieredkv_common.vllm_lines import line_for_release

        return line_for_release(version).field_schema


class SeedRule(enum.Enum):
    """How a vLLM release line seeds NONE_HASH when PYTHONHASHSEED is unset (a set value is always used)."""

    RANDOM_WHEN_UNSET = "random_when_unset"
    """vLLM 0.22 … 0.28: unset means 32 random bytes per process, for every algorithm."""
    DEFAULT_WHEN_UNSET = "default_when_unset"
    """vLLM 0.29 on: unset means `DEFAULT_NONE_HASH_SEED` for the sha256 algorithms, random for xxhash."""

    @classmethod
    def for_vllm(cls, version: str) -> SeedRule:
        """The rule of a vLLM release such as "0.33.0" (its line's row in the table)."""
        from tieredkv_common.vllm_lines import line_for_release

        return line_for_release(version).seed_rule


@dataclass(frozen=True)
class NamingFields:
    """The run-config key names of one `FieldSchema`, exactly as vLLM writes them into config.json."""

    tokens_per_hash: str
    blocks_per_file: str
    group_tokens_per_block: str
    """Key of a KV-cache group's tokens per GPU block."""
    markers: bool
    """Whether `parallel_agnostic: false`, `replicated_layout` and `canonical_format` can appear."""
    resolved_dtype: bool
    """True: `dtype` is the resolved KV dtype ("bfloat16"); False: the raw cache_dtype (usually "auto")."""


NAMING_FIELDS: Final[dict[FieldSchema, NamingFields]] = {
    FieldSchema.LEGACY: NamingFields("hash_block_size", "gpu_blocks_per_file", "block_size", False, False),
    FieldSchema.CURRENT: NamingFields("tokens_per_hash", "blocks_per_file", "tokens_per_block", True, True),
}


def none_hash_seed(rule: SeedRule, algo: str, pythonhashseed: str | None) -> str | None:
    """The seed string vLLM hashes into NONE_HASH, or None when it draws a random one (nobody can share it).

    A set PYTHONHASHSEED is used verbatim, even `""` or `"random"`; `"0"` and `"00"` are different seeds.
    """
    if algo not in HASH_DIGEST_BYTES:
        raise ValueError(
            f"unknown prefix-caching hash algorithm {algo!r}; known: {', '.join(HASH_DIGEST_BYTES)}"
        )
    if pythonhashseed is not None:
        return pythonhashseed
    if rule is SeedRule.DEFAULT_WHEN_UNSET and algo in DEFAULT_SEEDED_ALGOS:
        return DEFAULT_NONE_HASH_SEED
    return None


@dataclass(frozen=True)
class TierApi:
    """The parts of vLLM's secondary-tier API (`vllm.v1.kv_offload.tiering.base`) that differ by line."""

    job_slot_field: str
    """`TransferJob` field holding the primary-tier slot of each key: "chunk_ids" or (older) "block_ids"."""
    finished_jobs_method: str
    """The polling method: "get_finished_jobs", or "get_finished" in 0.22."""
    on_new_request: bool
    """`on_new_request(req_context)` exists and must return a `RequestOffloadingContext` (0.23 on)."""
    default_offload_policy: str
    """The `OffloadPolicy` member a default `RequestOffloadingContext` carries: "CHUNK_LEVEL", or
    "BLOCK_LEVEL" before the block -> chunk rename ("" where there is no `on_new_request`)."""
    lookup_result: bool
    """`lookup` answers vLLM's `LookupResult` enum; False: `True`/`False`/`None` (hit/miss/retry)."""
    job_result_fields: tuple[str, ...]
    """The fields of `JobResult`."""
    touch: bool
    """`SecondaryTierManager.touch(keys, req_context)` exists (removed in 0.34)."""
    async_lookup_manager: bool
    """`vllm.v1.kv_offload.tiering.async_lookup.AsyncLookupManager` exists (False: absent or unverified)."""
    backpressure_detector: bool
    """The base class's constructor takes `backpressure_detector` (built from a tier's `backpressure` key)."""
    single_node_secondary_tiers: bool
    """Secondary tiers raise NotImplementedError when the engine's TP/PP/PCP groups span nodes (0.34 on)."""

    @property
    def deferred_release(self) -> bool:
        """`JobResult.deferred_release` exists: a failed load gives vLLM an event to set when its I/O ends."""
        return "deferred_release" in self.job_result_fields
