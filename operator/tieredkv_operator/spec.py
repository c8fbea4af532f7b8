"""The TieredKVCache custom resource, as pydantic models: the single source of truth for its schema.

The CRD (crd.py), the validating webhook and the builders all derive from these models. Field names are
snake_case in Python and camelCase on the wire. Rules that span fields live in model validators here; the
CRD carries only what a Kubernetes 1.20 API server can check (types, enums, ranges, patterns, defaults).
"""

from enum import StrEnum
from typing import Annotated, Final, Literal, Self

from pydantic import Field, JsonValue, NonNegativeInt, field_validator, model_validator

from tieredkv_common import agent_limits as lim
from tieredkv_operator import api_rules
from tieredkv_operator.model_base import ByteCount, CamelModel, DnsSubdomain, Quantity, SecretKey
from tieredkv_operator.quantity import parse_quantity
from tieredkv_operator.spec_vllm import VllmMode, VllmSpec
from tieredkv_operator.status_model import TieredKVCacheStatus

GROUP: Final = "tieredkv.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "TieredKVCache"
PLURAL: Final = "tieredkvcaches"
SINGULAR: Final = "tieredkvcache"
SHORT_NAMES: Final = ("tkv",)

DEFAULT_SOCKET_DIR: Final = "/var/run/tieredkv"
"""Where agents put their sockets unless spec.agent.socketDir says otherwise (the CSI driver serves it)."""
DEFAULT_MAX_BYTES_PERCENT: Final = 90
"""capacity.maxBytes, when unset, is this percentage of the volume's capacity."""
MAX_HASH_SEED: Final = 4294967295
"""Largest PYTHONHASHSEED Python accepts; anything else (including "random") stops Python from starting."""


class AccessMode(StrEnum):
    READ_WRITE_MANY = "ReadWriteMany"
    READ_WRITE_ONCE = "ReadWriteOnce"


class StorageSpec(CamelModel):
    """The shared volume that holds the file tier: a claim the operator creates, or one it adopts."""

    size: Quantity | None = None
    """Requested size of the claim the operator creates, e.g. 500Gi. Required unless existingClaim is set."""
    storage_class_name: DnsSubdomain | None = None
    """StorageClass of the created claim; unset uses the cluster default. Must support ReadWriteMany."""
    access_modes: list[AccessMode] = Field(default=[AccessMode.READ_WRITE_MANY], min_length=1)
    """Access modes of the created claim. ReadWriteOnce only works when every vLLM pod is on one node."""
    existing_claim: DnsSubdomain | None = None
    """Adopt this PersistentVolumeClaim (same namespace) instead of creating one."""
    retain_on_delete: bool = True
    """Keep the claim (and the generated seed Secret) when the TieredKVCache is deleted."""
    sub_path: str | None = Field(
        default=None, min_length=1, max_length=lim.MAX_SUB_PATH_BYTES, pattern=r"^[^/\x00-\x1f\x7f]"
    )
    """Directory inside the volume that holds this cache's files, relative to it. Unset: the volume root."""

    @field_validator("size")
    @classmethod
    def _positive_size(cls, value: str | None) -> str | None:
        if value is not None and parse_quantity(value) <= 0:
            raise ValueError(f"storage.size must be greater than zero, got {value!r}")
        return value

    @field_validator("sub_path")
    @classmethod
    def _relative_clean_path(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if any(part in {"", ".", ".."} for part in value.split("/")):
            raise ValueError(f"subPath {value!r} must be a relative path without empty, '.' or '..' segments")
        _check_path_text("subPath", value, max_bytes=lim.MAX_SUB_PATH_BYTES)
        return value

    @model_validator(mode="after")
    def _size_or_existing_claim(self) -> Self:
        if self.existing_claim is None and self.size is None:
            raise ValueError("storage needs either size (to create a claim) or existingClaim (to adopt one)")
        if self.existing_claim is not None and (self.size is not None or self.storage_class_name is not None):
            raise ValueError(
                "storage.existingClaim adopts a claim as it is: leave size and storageClassName unset with it"
            )
        return self

    def size_bytes(self) -> int | None:
        """The requested size in bytes; None for an adopted claim (its capacity is known only at runtime)."""
        return None if self.size is None else parse_quantity(self.size)


def _check_path_text(field: str, value: str, *, max_bytes: int) -> None:
    """A path the agent creates on a node or a volume: printable, short segments, a bounded length."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError(f"{field} {value!r} contains a control character (NUL, newline, ...)")
    if len(value.encode()) > max_bytes:
        raise ValueError(f"{field} is {len(value.encode())} bytes long, at most {max_bytes} are allowed")
    for part in value.split("/"):
        if len(part.encode()) > lim.MAX_PATH_SEGMENT_BYTES:
            raise ValueError(
                f"{field} has a segment of {len(part.encode())} bytes; a file name is at most "
                f"{lim.MAX_PATH_SEGMENT_BYTES} bytes (ENAMETOOLONG)"
            )


def _raise_problems(problems: list[str]) -> None:
    if problems:
        raise ValueError("; ".join(problems))


class SecretKeyRef(CamelModel):
    """A key in a Secret in the cache's namespace."""

    name: DnsSubdomain
    """Name of the Secret."""
    key: SecretKey = "seed"
    """Key inside the Secret whose value is the seed."""


class HashSeedSpec(CamelModel):
    """Where the PYTHONHASHSEED shared by every vLLM pod and agent of this cache comes from.

    Block file names only match across pods when every pod hashes with the same seed. With neither field
    set, the operator generates a random seed into a Secret it owns.
    """

    secret_ref: SecretKeyRef | None = None
    """Use the seed stored in this Secret key."""
    value: str | None = Field(default=None, pattern=r"^[0-9]{1,10}$")
    """Literal seed, for demos only: it is visible to anyone who can read the TieredKVCache. Discouraged."""

    @field_validator("value")
    @classmethod
    def _python_accepts_seed(cls, value: str | None) -> str | None:
        if value is not None and int(value) > MAX_HASH_SEED:
            raise ValueError(f"hashSeed.value must be a decimal integer between 0 and {MAX_HASH_SEED}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if self.secret_ref is not None and self.value is not None:
            raise ValueError("hashSeed: set secretRef or value, not both")
        return self


class StoreAdmission(CamelModel):
    """Write a block to the shared volume only once it has been requested often enough on the node."""

    threshold: NonNegativeInt = 0
    """Requests of a block on this node before it is stored; 0 stores every block."""
    max_tracker_size: int = Field(default=64000, ge=lim.MIN_TRACKER_SIZE)
    """Blocks whose request counts the agent tracks (least recently seen are forgotten first)."""


class AgentSpec(CamelModel):
    """The per-node agent DaemonSet: GC, integrity sweeps, metrics, and the data path in agent mode."""

    image: str | None = Field(default=None, min_length=1, pattern=r"^\S+$")
    """Agent image; unset uses the image matching the operator's version."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Nodes the agents run on: every node that may run a matching vLLM pod."""
    tolerations: list[dict[str, JsonValue]] = Field(default_factory=list)
    """Pod tolerations (core/v1 Toleration objects), e.g. for tainted GPU nodes."""
    resources: dict[str, JsonValue] = Field(default_factory=dict)
    """Container resources (core/v1 ResourceRequirements) of the agent."""
    volume_latency: Literal["local", "network"] = "local"
    """What one file operation on the shared volume costs: `local` (a disk, microseconds) or `network`
    (NFS, CephFS, GlusterFS: about a millisecond). Picks the agent's default I/O threads: 4 + 4 or 16 + 16."""
    read_threads: int | None = Field(default=None, ge=lim.MIN_THREADS, le=lim.MAX_THREADS)
    """I/O threads that serve loads from the shared volume; unset: by volumeLatency."""
    write_threads: int | None = Field(default=None, ge=lim.MIN_THREADS, le=lim.MAX_THREADS)
    """I/O threads that store blocks to the shared volume; unset: by volumeLatency."""
    ram_tier_bytes: ByteCount = 0
    """Node RAM the agent keeps recently used blocks in (agent mode only); 0 disables the RAM tier."""
    socket_dir: str = Field(
        default=DEFAULT_SOCKET_DIR, pattern=r"^/.*$", max_length=lim.MAX_SOCKET_PATH_BYTES
    )
    """Host directory for the agent sockets; each cache uses <socketDir>/<namespace>.<name>/agent.sock."""
    socket_volume: Literal["csi", "hostPath"] = "hostPath"
    """How vLLM pods get the socket directory (agent mode only): `csi`, an inline ephemeral volume of the
    chart's CSI driver (socket.tieredkv.io; allowed by Pod Security baseline and restricted; needs the chart's
    csi.enabled and the default socketDir), or `hostPath`, which baseline forbids."""
    store_admission: StoreAdmission = StoreAdmission()
    """Admission filter for stores to the shared volume (agent mode only)."""
    on_profile_mismatch: Literal["reject", "warn"] = "reject"
    """What an agent does with a vLLM instance whose NONE_HASH fingerprint differs from the cache's: `reject`
    its Hello (the instance then runs without the shared tier) or `warn` and serve it. Either way the agent
    records it in status.profileMismatches and SeedConsistent turns False (agent mode only)."""

    @field_validator("node_selector")
    @classmethod
    def _valid_labels(cls, value: dict[str, str]) -> dict[str, str]:
        _raise_problems(api_rules.labels(value))
        return value

    @field_validator("tolerations")
    @classmethod
    def _valid_tolerations(cls, value: list[dict[str, JsonValue]]) -> list[dict[str, JsonValue]]:
        for i, item in enumerate(value):
            _raise_problems([f"[{i}]: {p}" for p in api_rules.toleration(item)])
        return value

    @field_validator("resources")
    @classmethod
    def _valid_resources(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        _raise_problems(api_rules.resource_requirements(value))
        return value

    @model_validator(mode="after")
    def _csi_serves_the_default_socket_dir(self) -> Self:
        if self.socket_volume == "csi" and self.socket_dir != DEFAULT_SOCKET_DIR:
            raise ValueError(
                f"agent.socketVolume csi publishes sockets from {DEFAULT_SOCKET_DIR} only (the chart's CSI "
                f"driver serves that directory); agent.socketDir is {self.socket_dir!r}: drop it or use "
                "socketVolume: hostPath"
            )
        return self

    @field_validator("socket_dir")
    @classmethod
    def _safe_socket_dir(cls, value: str) -> str:
        _check_path_text("agent.socketDir", value, max_bytes=lim.MAX_SOCKET_PATH_BYTES)
        parts = value.split("/")[1:]
        if value == "/" or any(part in {"", ".", ".."} for part in parts):
            raise ValueError(
                f"agent.socketDir {value!r} must be an absolute path below / without empty, '.' or '..' "
                "segments"
            )
        for forbidden in lim.FORBIDDEN_HOST_DIRS:
            if value == forbidden or value.startswith(forbidden + "/"):
                raise ValueError(
                    f"agent.socketDir {value!r} is under {forbidden}, a host system directory; use e.g. "
                    "/var/run/tieredkv"
                )
        return value


class CapacitySpec(CamelModel):
    """How much of the volume the cache may use; the agents' GC leader keeps usage between the watermarks."""

    max_bytes: ByteCount | None = None
    """Bytes the cache may use. Unset: 90% of the volume (storage.size, or the adopted claim's capacity)."""
    high_watermark: float = Field(default=0.9, gt=lim.HIGH_WATERMARK_EXCLUSIVE_MIN, le=lim.HIGH_WATERMARK_MAX)
    """Fraction of maxBytes at which GC starts deleting least recently used blocks."""
    low_watermark: float = Field(
        default=0.8, gt=lim.LOW_WATERMARK_EXCLUSIVE_MIN, lt=lim.LOW_WATERMARK_EXCLUSIVE_MAX
    )
    """Fraction of maxBytes GC deletes down to. Must be below highWatermark."""

    @field_validator("max_bytes")
    @classmethod
    def _positive_max_bytes(cls, value: int | None) -> int | None:
        if value is not None and value <= lim.MAX_BYTES_EXCLUSIVE_MIN:
            raise ValueError(
                f"capacity.maxBytes must be greater than {lim.MAX_BYTES_EXCLUSIVE_MIN} (the agent "
                "refuses an empty capacity), or left unset for 90% of the volume"
            )
        return value

    @model_validator(mode="after")
    def _low_below_high(self) -> Self:
        if self.low_watermark >= self.high_watermark:
            raise ValueError(
                f"capacity.lowWatermark ({self.low_watermark}) must be below "
                f"capacity.highWatermark ({self.high_watermark})"
            )
        return self


METRICS_PORT: Final = 9400
"""The agents' metrics port (rendered by resources/agents.py; the events ports must not take it)."""


class EventKind(StrEnum):
    BLOCK_STORED = "BlockStored"
    BLOCK_REMOVED = "BlockRemoved"
    ALL_BLOCKS_CLEARED = "AllBlocksCleared"


ModelName = Annotated[
    str, Field(min_length=1, max_length=lim.MAX_MODEL_NAME_BYTES, pattern=r"^[^\x00-\x1f\x7f]+$")
]


class EventsFilterSpec(CamelModel):
    """Which KV events the agents publish (docs/events.md#filter); each list left empty means all."""

    kinds: list[EventKind] = Field(default_factory=lambda: list(EventKind), min_length=1, max_length=3)
    """Event kinds to publish: BlockStored, BlockRemoved, AllBlocksCleared (default: all three)."""
    models: list[ModelName] = Field(default_factory=list, max_length=lim.MAX_EVENTS_FILTER_ITEMS)
    """Publish only the events of these models (names as vLLM serves them); empty: every model."""
    groups: list[NonNegativeInt] = Field(default_factory=list, max_length=lim.MAX_EVENTS_FILTER_ITEMS)
    """Publish only block events of these KV-cache groups (group_idx); empty: every group."""

    @field_validator("kinds")
    @classmethod
    def _distinct_kinds(cls, value: list[EventKind]) -> list[EventKind]:
        if len(set(value)) < len(value):
            raise ValueError(f"events.filter.kinds names a kind twice: {[k.value for k in value]}")
        return value


class EventsSpec(CamelModel):
    """KV events for prefix-aware routers (docs/events.md): the agents publish, in vLLM's KV-events format,
    every block file that appears on the volume and every one GC deletes."""

    enabled: bool = False
    """Publish KV events from every agent (ZMQ PUB on `port`, replay on `replayPort`)."""
    port: int = Field(default=5557, ge=1024, le=65535)
    """Port of the agents' PUB socket (vLLM's default events port)."""
    replay_port: int = Field(default=5558, ge=1024, le=65535)
    """Port of the agents' replay socket, where late subscribers ask for missed batches."""
    summary_port: int = Field(default=5559, ge=1024, le=65535)
    """HTTP port of the agents' membership summary for polling routers."""
    filter: EventsFilterSpec = EventsFilterSpec()
    """Which events are published (by kind, model, KV-cache group); the default publishes all."""

    @model_validator(mode="after")
    def _distinct_ports(self) -> Self:
        ports = [self.port, self.replay_port, self.summary_port, METRICS_PORT]
        if len(set(ports)) < len(ports):
            raise ValueError(
                f"events.port ({self.port}), events.replayPort ({self.replay_port}) and "
                f"events.summaryPort ({self.summary_port}) must differ from each other and from the "
                f"agents' metrics port {METRICS_PORT}"
            )
        return self


class TieredKVCacheSpec(CamelModel):
    """Desired state of a shared, tiered KV cache for a set of vLLM pods."""

    storage: StorageSpec
    """The shared volume holding the file tier."""
    hash_seed: HashSeedSpec = HashSeedSpec()
    """Source of the PYTHONHASHSEED every pod of this cache must share."""
    vllm: VllmSpec
    """Which pods use the cache and how their --kv-transfer-config is rendered."""
    agent: AgentSpec = AgentSpec()
    """The per-node agents."""
    capacity: CapacitySpec = CapacitySpec()
    """Capacity bound and GC watermarks of the shared tier."""
    events: EventsSpec = EventsSpec()
    """KV events about the shared tier for prefix-aware routers (off by default)."""

    @model_validator(mode="after")
    def _max_bytes_fit_the_volume(self) -> Self:
        size = self.storage.size_bytes()
        if size is not None and self.capacity.max_bytes is not None and self.capacity.max_bytes > size:
            raise ValueError(
                f"capacity.maxBytes ({self.capacity.max_bytes}) exceeds storage.size "
                f"({self.storage.size} = {size} bytes)"
            )
        return self

    @model_validator(mode="after")
    def _agent_data_path_needs_agent_mode(self) -> Self:
        if self.vllm.mode is VllmMode.AGENT:
            return self
        used = [
            name
            for name, value in (
                ("agent.ramTierBytes", self.agent.ram_tier_bytes),
                ("agent.storeAdmission.threshold", self.agent.store_admission.threshold),
            )
            if value
        ]
        if used:
            raise ValueError(
                f"{' and '.join(used)} only act in the agent's data path: set vllm.mode to agent, "
                "or set them to 0 for native mode"
            )
        return self

    def effective_max_bytes(self, volume_bytes: int | None = None) -> int | None:
        """capacity.maxBytes, else 90% of the volume: its observed capacity `volume_bytes`, else storage.size.

        Returns None when neither is known (an adopted claim whose capacity was not observed yet), and
        never less than 1, the smallest bound the agent accepts.
        """
        if self.capacity.max_bytes is not None:
            return self.capacity.max_bytes
        basis = self.storage.size_bytes() if volume_bytes is None else volume_bytes
        if basis is None:
            return None
        # At least one byte: the agent refuses a bound of 0, and 90% of a tiny volume rounds down to it.
        return max(1, basis * DEFAULT_MAX_BYTES_PERCENT // 100)


class TieredKVCache(CamelModel):
    """A whole TieredKVCache object, for reading manifests (metadata is passed through unchecked)."""

    api_version: Literal["tieredkv.io/v1alpha1"]
    kind: Literal["TieredKVCache"]
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    spec: TieredKVCacheSpec
    status: TieredKVCacheStatus | None = None


__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "SHORT_NAMES",
    "SINGULAR",
    "VERSION",
    "AccessMode",
    "AgentSpec",
    "CapacitySpec",
    "HashSeedSpec",
    "SecretKeyRef",
    "StorageSpec",
    "StoreAdmission",
    "TieredKVCache",
    "TieredKVCacheSpec",
    "VllmMode",
    "VllmSpec",
]
