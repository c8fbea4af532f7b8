"""What the plugin tells the agent about its engine: the compat profile, read from vLLM or a stand-in.

With vLLM installed the profile comes from vLLM itself, so it cannot drift from what the `fs` tier does:

* the namespace directory is the base name of vLLM's own `FileMapper.from_offloading_spec(...)
  .base_path`, built exactly as `FileSystemTierManager` builds it;
* NONE_HASH is `vllm.v1.core.kv_cache_utils.NONE_HASH` (set by `init_none_hash` before the scheduler
  builds its connector); the hash algorithm is read from the vLLM config where the release has it and
  otherwise inferred from NONE_HASH's length (32 bytes: sha256, 16: xxhash — the key length is what the
  agent checks);
* the block size is the region's row stride.

An engine that is not vLLM (the demo's stand-in engine, tests) passes an offloading spec with a
`tieredkv_engine` attribute holding an `EngineProfile`; tieredkv computes that namespace with its own
`store.naming`, which golden tests hold to vLLM's.

Called once, from the tier's constructor (vLLM's scheduler thread).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tieredkv_agent.api.protocol import CompatProfile, none_hash_fingerprint
from tieredkv_agent.store.naming import RunConfig, config_digest, run_config_fields, safe_model_name

if TYPE_CHECKING:  # the hashing module needs cbor2 and xxhash; a vLLM image need not have them
    from tieredkv_agent.store.hashing import HashAlgo

HASH_ALGOS = ("sha256", "sha256_cbor", "xxhash", "xxhash_cbor")


class ProfileError(Exception):
    """The engine's compat profile cannot be determined; says what is missing."""


@dataclass(frozen=True, slots=True)
class EngineProfile:
    """An engine's identity when it is not vLLM itself (set as `offloading_spec.tieredkv_engine`)."""

    run_config: RunConfig
    hash_algo: HashAlgo
    none_hash: bytes
    vllm_version: str
    """The vLLM release whose behaviour the engine reproduces."""

    @property
    def namespace(self) -> str:
        fields = run_config_fields(self.run_config)
        return f"{safe_model_name(self.run_config.model_name)}_{config_digest(fields)}"


@dataclass(frozen=True, slots=True)
class Identity:
    """Everything the Hello needs except the region."""

    profile: CompatProfile
    vllm_version: str


def identify(offloading_spec: Any, block_bytes: int) -> Identity:
    """The compat profile of the engine that built `offloading_spec` (scheduler thread, once)."""
    engine = getattr(offloading_spec, "tieredkv_engine", None)
    if isinstance(engine, EngineProfile):
        return _identity(
            engine.namespace, block_bytes, engine.hash_algo.value, engine.none_hash, engine.vllm_version
        )
    try:
        vllm = importlib.import_module("vllm")
    except ImportError as exc:
        raise ProfileError(
            "vLLM is not importable and the offloading spec carries no tieredkv_engine profile"
        ) from exc
    version = str(getattr(vllm, "__version__", "unknown"))
    namespace = _vllm_namespace(offloading_spec)
    none_hash = _vllm_none_hash()
    algo = _vllm_hash_algo(offloading_spec, none_hash)
    if none_hash is None:  # vLLM did not initialise it yet: derive it the way init_none_hash will
        from tieredkv_agent.store.hashing import HashAlgo, SeedRule, none_hash_for_env

        none_hash = none_hash_for_env(HashAlgo(algo), SeedRule.for_vllm(version), os.environ)
    return _identity(namespace, block_bytes, algo, none_hash, version)


def _identity(namespace: str, block_bytes: int, algo: str, none_hash: bytes, version: str) -> Identity:
    profile = CompatProfile(
        namespace=namespace,
        block_bytes=block_bytes,
        hash_algo=algo,  # type: ignore[arg-type]  # one of HASH_ALGOS on every path
        none_hash_fingerprint=none_hash_fingerprint(none_hash),
    )
    return Identity(profile, version[:64])


def _vllm_namespace(offloading_spec: Any) -> str:
    try:
        file_mapper = importlib.import_module("vllm.v1.kv_offload.file_mapper")
        mapper = file_mapper.FileMapper.from_offloading_spec(
            root_dir="",
            offloading_spec=offloading_spec,
            blocks_per_file=offloading_spec.blocks_per_chunk,
            parallel_agnostic=True,
        )
    except Exception as exc:
        raise ProfileError(f"vLLM's FileMapper could not name this engine's namespace: {exc}") from exc
    return Path(str(mapper.base_path)).name


def _vllm_none_hash() -> bytes | None:
    try:
        utils = importlib.import_module("vllm.v1.core.kv_cache_utils")
    except Exception:
        return None
    value = getattr(utils, "NONE_HASH", None)
    return bytes(value) if isinstance(value, bytes | bytearray) else None


def _vllm_hash_algo(offloading_spec: Any, none_hash: bytes | None) -> str:
    config = getattr(offloading_spec, "vllm_config", None)
    if config is None:
        try:
            config = importlib.import_module("vllm.config").get_current_vllm_config()
        except Exception:
            config = None
    algo = getattr(getattr(config, "cache_config", None), "prefix_caching_hash_algo", None)
    if isinstance(algo, str) and algo in HASH_ALGOS:
        return algo
    if none_hash is not None:
        return "xxhash" if len(none_hash) == 16 else "sha256"
    raise ProfileError("cannot tell vLLM's prefix-caching hash algorithm (no config, no NONE_HASH)")
