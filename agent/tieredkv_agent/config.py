"""The agent process's configuration: one pydantic settings model, from a file and TIEREDKV_* variables.

Sources, later ones winning: defaults, the YAML or JSON file named by TIEREDKV_CONFIG_FILE (or the CLI's
--config), environment variables. The operator renders the variables (see operator resources/agents.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tieredkv_common import agent_limits as lim


class FileSource(PydanticBaseSettingsSource):
    """Settings from the YAML/JSON file named by TIEREDKV_CONFIG_FILE (keys are the field names)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("TIEREDKV_CONFIG_FILE")
        if not path:
            return {}
        text = Path(path).read_text()
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the config file must hold a mapping of settings")
        return data


IO_THREADS: dict[str, tuple[int, int]] = {"local": (4, 4), "network": (16, 16)}
"""Default (read, write) file-tier threads per `volume_latency`, picked from bench/vllm_fs_io.py runs on 2
cores: on a local disk 4 + 4 moved the most bytes per CPU second (more threads only fight over the GIL);
with 1 ms per file operation (a network volume) throughput grows with threads up to vLLM's 16 + 16."""


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIEREDKV_", extra="forbid", use_attribute_docstrings=True)

    # Identity (the downward API fills these in a pod).
    cache_name: str = "local"
    """The TieredKVCache this agent serves (its name)."""
    cache_namespace: str = ""
    """The cache's Kubernetes namespace."""
    node_name: str = ""
    """The node this agent runs on (downward API)."""
    pod_name: str = ""
    """This agent's pod (downward API); its identity in GC leader elections."""
    pod_ip: str = ""
    """Address the metrics endpoint binds (empty: all addresses)."""
    mode: Literal["agent", "native"] = "native"
    """agent: serve vLLM instances over the socket; native: vLLM writes the files itself."""
    vllm_version: str = ""
    """The cache's vLLM line (selects file naming and the seeding rule)."""
    vllm_config_hash: str = ""
    """Digest of the cache's rendered vLLM tiering config (logged, compared in Hellos)."""
    hash_algo: Literal["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"] = "sha256"
    """vLLM --prefix-caching-hash-algo of this cache: with PYTHONHASHSEED it fixes the expected NONE_HASH."""
    on_profile_mismatch: Literal["reject", "warn"] = "reject"
    """What the socket server does with an instance whose NONE_HASH fingerprint differs from the agent's."""

    # Where things are.
    store_dir: Path = Path("/var/lib/tieredkv/store")
    """The cache's directory on the shared volume (the claim's subPath is already applied)."""
    socket_dir: Path = Path("/var/run/tieredkv/local")
    """Directory of the node socket vLLM instances connect to (agent mode)."""

    # File-tier I/O.
    volume_latency: Literal["local", "network"] = "local"
    """What one file operation on the volume costs: local (a disk) or network (~1 ms a round trip); picks
    the thread counts below (IO_THREADS: 4 + 4 or 16 + 16) where they are not set."""
    read_threads: int = Field(default=4, ge=lim.MIN_THREADS, le=lim.MAX_THREADS)
    """File-tier threads that serve loads (read priority); unset: by volume_latency."""
    write_threads: int = Field(default=4, ge=lim.MIN_THREADS, le=lim.MAX_THREADS)
    """File-tier threads that serve stores (write priority); unset: by volume_latency."""
    ram_tier_bytes: int = Field(default=0, ge=lim.MIN_RAM_TIER_BYTES)
    """Bytes of the node RAM tier in front of the file tier (0: none)."""
    ram_tier_block_bytes: int | None = Field(default=None, gt=0)
    """Pins the RAM tier's block size; unset, the first block of at least its minimum size does."""
    store_admission_threshold: int = Field(default=0, ge=lim.MIN_STORE_ADMISSION_THRESHOLD)
    """Stores admitted to the file tier only after a block was offered this many times (0: all)."""
    store_admission_max_tracker_size: int = Field(default=64000, ge=lim.MIN_TRACKER_SIZE)
    """Blocks the store-admission tracker remembers."""

    # Capacity management.
    max_bytes: int | None = Field(default=None, gt=lim.MAX_BYTES_EXCLUSIVE_MIN)
    """Capacity GC keeps the store under (unset: the filesystem size)."""
    high_watermark: float = Field(default=0.9, gt=lim.HIGH_WATERMARK_EXCLUSIVE_MIN, le=lim.HIGH_WATERMARK_MAX)
    """Fraction of capacity at which GC starts evicting."""
    low_watermark: float = Field(
        default=0.8, gt=lim.LOW_WATERMARK_EXCLUSIVE_MIN, lt=lim.LOW_WATERMARK_EXCLUSIVE_MAX
    )
    """Fraction of capacity GC evicts down to."""
    gc_grace_seconds: float = Field(default=120.0, ge=0)
    """Blocks used within this many seconds are not evicted."""
    gc_temp_timeout_seconds: float = Field(default=600.0, ge=0)
    """Temp files older than this are a dead writer's and are removed."""
    gc_scan_interval_seconds: float = Field(default=30.0, gt=0)
    """Seconds between GC passes of the leader."""
    gc_scan_threads: int = Field(default=4, ge=1, le=64)
    """Threads that scan the store in a GC pass."""
    gc_lease_name: str = ""
    """Lease used to elect the GC leader; empty (outside a cluster) uses a lock file on the volume."""

    # Socket server limits (docs/security.md; defaults in tieredkv_common.agent_limits).
    max_connections: int = Field(default=lim.MAX_CONNECTIONS, ge=1, le=4096)
    """Connections served at once; the next one is refused with an error."""
    max_inflight_keys: int = Field(default=lim.MAX_INFLIGHT_KEYS, ge=1)
    """Per connection: keys of Store and Load jobs accepted and not yet reported."""
    max_staged_bytes: int = Field(default=lim.MAX_STAGED_BYTES, ge=1)
    """Per connection: bytes of its jobs staged in the agent's memory at once (more jobs wait)."""
    max_total_staged_bytes: int = Field(default=lim.MAX_TOTAL_STAGED_BYTES, ge=1)
    """Per agent: the same over all connections."""
    max_buffered_frame_bytes: int = Field(default=lim.MAX_BUFFERED_FRAME_BYTES, ge=1)
    """Per agent: bytes of partial frames held for all connections."""
    max_region_bytes: int = Field(default=lim.MAX_REGION_BYTES, ge=1)
    """The largest region a Hello may declare."""
    max_send_queue_bytes: int = Field(default=lim.MAX_SEND_QUEUE_BYTES, ge=1024)
    """Per connection: reply bytes queued for a client that does not read them; beyond, it is closed."""
    send_timeout_seconds: float = Field(default=lim.SEND_TIMEOUT_S, gt=0, le=3600)
    """A reply the client does not take within this time closes the connection."""

    metrics_port: int = Field(default=9400, ge=0, le=65535)
    """0 disables the metrics endpoint."""

    # KV events for routers (docs/events.md).
    events_enabled: bool = False
    """Publish the cache's block changes as vLLM KV events (ZMQ PUB) for prefix-aware routers."""
    events_port: int = Field(default=5557, ge=1, le=65535)
    """TCP port of the KV-events PUB socket (bound on pod_ip, else every address)."""
    events_replay_port: int = Field(default=5558, ge=0, le=65535)
    """TCP port of the replay ROUTER socket late subscribers ask for missed batches (0: no replay)."""
    events_replay_batches: int = Field(default=10_000, ge=1, le=1_000_000)
    """Batches kept for replay (also bounded by events_replay_bytes)."""
    events_replay_bytes: int = Field(default=64 << 20, ge=1024)
    """Bytes of batches kept for replay."""
    events_summary_port: int = Field(default=5559, ge=0, le=65535)
    """TCP port of the HTTP membership summary (Bloom filters of the volume's blocks; 0: not served)."""
    events_summary_interval_seconds: float = Field(default=300.0, ge=1.0)
    """Seconds between the walks of the volume's file names that rebuild the membership summary."""
    events_max_queue: int = Field(default=100_000, ge=16, le=10_000_000)
    """Changes waiting for the publisher thread; beyond, a change is dropped and counted, never waited for."""
    events_kinds: list[Literal["BlockStored", "BlockRemoved", "AllBlocksCleared"]] = Field(
        default=["BlockStored", "BlockRemoved", "AllBlocksCleared"], min_length=1
    )
    """Event kinds published (a JSON list in the environment); the others are counted as filtered."""
    events_models: list[str] = Field(default_factory=list, max_length=lim.MAX_EVENTS_FILTER_ITEMS)
    """Models (as vLLM serves them) whose events are published; empty: every model."""
    events_groups: list[int] = Field(default_factory=list, max_length=lim.MAX_EVENTS_FILTER_ITEMS)
    """KV-cache group indexes whose block events are published; empty: every group."""

    @field_validator("events_kinds", "events_models", "events_groups", mode="before")
    @classmethod
    def _json_list(cls, value: object) -> object:
        """A JSON list given as text (how the operator renders it, also when passed as an argument)."""
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f"expected a JSON list, got {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _thread_defaults(self) -> Self:
        reads, writes = IO_THREADS[self.volume_latency]
        if "read_threads" not in self.model_fields_set:
            self.read_threads = reads
        if "write_threads" not in self.model_fields_set:
            self.write_threads = writes
        return self

    @model_validator(mode="after")
    def _watermarks(self) -> Self:
        if self.low_watermark >= self.high_watermark:
            raise ValueError(
                f"low_watermark ({self.low_watermark}) must be below high_watermark ({self.high_watermark})"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, FileSource(settings_cls)

    @classmethod
    def help_lines(cls) -> list[str]:
        """One line per setting for `run --help`: its variable, its default and what it is."""
        lines = []
        for name, field in cls.model_fields.items():
            default = field.get_default(call_default_factory=True)
            shown = "unset" if default is None or default == "" else str(default)
            about = (field.description or "").split("\n")[0]
            lines.append(f"  TIEREDKV_{name.upper():<34} {shown:<26} {about}".rstrip())
        return lines

    @property
    def identity(self) -> str:
        """Who this agent is in leader elections and logs."""
        return self.pod_name or self.node_name or os.uname().nodename

    def summary(self) -> str:
        """The start-up line's config part (the settings hold no secrets; the seed is not among them)."""
        limit = "filesystem size" if self.max_bytes is None else f"{self.max_bytes} bytes"
        cache = f"{self.cache_namespace}/{self.cache_name}"
        return (
            f"cache {cache} mode {self.mode} vllm {self.vllm_version or '?'} store {self.store_dir} "
            f"threads r{self.read_threads}/w{self.write_threads} "
            f"capacity {limit} at {self.high_watermark:g}->{self.low_watermark:g}"
        )
