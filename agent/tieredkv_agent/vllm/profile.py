"""What the plugin tells the agent about its engine, read from vLLM itself (or from a stand-in's profile).

Two moments, because vLLM builds its secondary tiers before it seeds its block hashes (0.33's
`EngineCore.__init__` builds the Scheduler, and with it the tiers, before `init_none_hash`):

* `describe` runs in the tier's constructor and needs nothing vLLM has not built yet: the namespace
  directory and its run-config fields come from vLLM's own `FileMapper.from_offloading_spec(...)`,
  exactly as the `fs` tier builds it; the block size is the region's row stride.
* `EngineView.identity` is asked again on every connection attempt and answers None until vLLM's
  `kv_cache_utils.NONE_HASH` exists. The hash family follows from NONE_HASH's length (32 bytes: sha256,
  16: xxhash), which is what fixes the key length the agent checks; the seed itself is compared through
  the NONE_HASH fingerprint.

An engine that is not vLLM (tieredkv's stand-in engine, tests, benchmarks) passes an offloading spec with a
`tieredkv_engine` attribute holding an `EngineProfile`; its namespace comes from tieredkv's `store.naming`,
which golden tests hold to vLLM's.

`describe` runs on vLLM's scheduler thread (the tier's constructor); `identity` on the plugin's
connect thread. Neither waits.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
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
    run_config: str | None
    """The run-config fields as JSON, for the namespace's config.json (None: the agent writes none)."""


@dataclass(frozen=True, slots=True)
class EngineView:
    """The engine as far as it is known when vLLM builds the tier; `identity` completes it later."""

    namespace: str
    block_bytes: int
    vllm_version: str
    run_config: str | None
    none_hash: Callable[[], bytes | None]
    """NONE_HASH once the engine has set it, None before."""
    hash_algo: str | None = None
    """Known up front for a stand-in engine; derived from NONE_HASH's length for vLLM."""

    def identity(self) -> Identity | None:
        """The Hello's profile, or None while the engine has not seeded its hashes (connect thread)."""
        none_hash = self.none_hash()
        if none_hash is None:
            return None
        algo = self.hash_algo or ("xxhash" if len(none_hash) == 16 else "sha256")
        profile = CompatProfile(
            namespace=self.namespace,
            block_bytes=self.block_bytes,
            hash_algo=algo,  # type: ignore[arg-type]  # one of HASH_ALGOS on every path
            none_hash_fingerprint=none_hash_fingerprint(none_hash),
        )
        return Identity(profile, self.vllm_version[:64], self.run_config)


def describe(offloading_spec: Any, block_bytes: int) -> EngineView:
    """What can be known of the engine while vLLM builds its tiers (scheduler thread, once)."""
    engine = getattr(offloading_spec, "tieredkv_engine", None)
    if isinstance(engine, EngineProfile):
        fields = run_config_fields(engine.run_config)
        return EngineView(
            namespace=engine.namespace,
            block_bytes=block_bytes,
            vllm_version=engine.vllm_version,
            run_config=json.dumps(fields),
            none_hash=lambda: engine.none_hash,
            hash_algo=engine.hash_algo.value,
        )
    try:
        vllm = importlib.import_module("vllm")
    except ImportError as exc:
        raise ProfileError(
            "vLLM is not importable and the offloading spec carries no tieredkv_engine profile"
        ) from exc
    namespace, fields = _vllm_namespace(offloading_spec)
    return EngineView(
        namespace=namespace,
        block_bytes=block_bytes,
        vllm_version=str(getattr(vllm, "__version__", "unknown")),
        run_config=json.dumps(fields),
        none_hash=_vllm_none_hash,
    )


def _vllm_namespace(offloading_spec: Any) -> tuple[str, dict[str, object]]:
    """The namespace directory name and run-config fields of vLLM's own FileMapper for this spec."""
    try:
        file_mapper = importlib.import_module("vllm.v1.kv_offload.file_mapper")
        mapper = file_mapper.FileMapper.from_offloading_spec(
            root_dir="",
            offloading_spec=offloading_spec,
            blocks_per_file=offloading_spec.blocks_per_chunk,
            parallel_agnostic=True,
        )
        fields = dict(mapper.get_run_config())
    except Exception as exc:
        raise ProfileError(f"vLLM's FileMapper could not name this engine's namespace: {exc}") from exc
    return Path(str(mapper.base_path)).name, fields


def _vllm_none_hash() -> bytes | None:
    """vLLM's NONE_HASH, None until `init_none_hash` has run (connect thread)."""
    try:
        utils = importlib.import_module("vllm.v1.core.kv_cache_utils")
    except Exception:
        return None
    value = getattr(utils, "NONE_HASH", None)
    return bytes(value) if isinstance(value, bytes | bytearray) else None
