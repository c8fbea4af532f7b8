"""One stand-in engine: its identity, its keys and block bytes, and tiers built from vLLM tier entries.

* `EngineSpec` stands where vLLM's `OffloadingSpec` stands; its `tieredkv_engine` attribute is the
  `EngineProfile` the tieredkv plugin reads when vLLM is not installed.
* `request_keys` hashes real token ids with the NONE_HASH of `PYTHONHASHSEED`, as vLLM's scheduler does.
* `block_content` is the block a "model" computes for a key: a pure function of the key.
* `build_tier` does what vLLM's `SecondaryTierFactory.create_secondary_tier` does with a tier entry.

The engine's main thread calls everything here.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tieredkv_agent.store.hashing import HashAlgo, SeedRule, block_hashes, none_hash_for_env
from tieredkv_agent.store.naming import KvCacheGroup, RunConfig, chunk_offload_keys
from tieredkv_agent.vllm.profile import EngineProfile

DEFAULT_RUN_CONFIG = RunConfig(
    model_name="tieredkv/standin-model",
    tokens_per_hash=16,
    blocks_per_file=1,
    dtype="bfloat16",
    kv_cache_groups=(KvCacheGroup(16, tuple(f"model.layers.{i}.self_attn.attn" for i in range(4))),),
)


@dataclass(frozen=True)
class EngineSpec:
    """The offloading spec of a stand-in engine (what vLLM passes as `offloading_spec`)."""

    tieredkv_engine: EngineProfile
    blocks_per_chunk: int = 1


def engine_spec(
    run_config: RunConfig = DEFAULT_RUN_CONFIG,
    *,
    hash_algo: HashAlgo = HashAlgo.SHA256,
    vllm_version: str = "0.33.0",
    environ: Mapping[str, str] | None = None,
) -> EngineSpec:
    """The spec of an engine started with `environ` (default: this process's environment)."""
    env = os.environ if environ is None else environ
    none = none_hash_for_env(hash_algo, SeedRule.for_vllm(vllm_version), env)
    return EngineSpec(EngineProfile(run_config, hash_algo, none, vllm_version), run_config.blocks_per_file)


def request_keys(spec: EngineSpec, token_ids: Sequence[int]) -> list[bytes]:
    """The offload keys of a request's full chunks (group 0), from real chained block hashes."""
    engine = spec.tieredkv_engine
    hashes = block_hashes(engine.hash_algo, engine.none_hash, token_ids, engine.run_config.tokens_per_hash)
    return chunk_offload_keys(hashes, spec.blocks_per_chunk, 0)


def prompt(seed: int, tokens: int, vocabulary: int = 32_000) -> list[int]:
    """A reproducible prompt of `tokens` token ids."""
    return [int(t) for t in np.random.default_rng(seed).integers(0, vocabulary, tokens)]


def block_content(key: bytes, size: int) -> bytes:
    """The bytes a model would compute for this block: a pure function of the key."""
    seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
    return np.random.default_rng(seed).bytes(size)


def build_tier(entry: Mapping[str, Any], spec: Any, primary_kv_view: memoryview) -> Any:
    """Construct a secondary tier from its `secondary_tiers` entry, as vLLM's factory does.

    `type` names the class inside `module_path`; every other key becomes a constructor keyword.
    """
    kwargs = copy.deepcopy(dict(entry))
    tier_type = kwargs.pop("type")
    module_path = kwargs.pop("module_path", None)
    if module_path is None:
        if tier_type != "tieredkv":
            raise ValueError(
                f"the stand-in engine only knows module_path tiers and 'tieredkv', not {tier_type!r}"
            )
        module_path, tier_type = "tieredkv_agent.vllm", "TieredKVTier"
    tier_cls = getattr(importlib.import_module(module_path), tier_type)
    return tier_cls(offloading_spec=spec, primary_kv_view=primary_kv_view, tier_type=tier_type, **kwargs)
