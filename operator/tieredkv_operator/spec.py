"""The TieredKVCache custom resource, as pydantic models: the single source of truth for its schema.

The CRD (crd.py), the validating webhook and the builders all derive from these models. Field names are
snake_case in Python and camelCase on the wire. Rules that span fields live in model validators here; the
CRD carries only what a Kubernetes 1.20 API server can check (types, enums, ranges, patterns, defaults).
"""

from enum import StrEnum
from typing import Final, Literal, Self

from pydantic import Field, JsonValue, NonNegativeInt, PositiveInt, field_validator, model_validator

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
    storage_class_name: str | None = Field(default=None, min_length=1)
    """StorageClass of the created claim; unset uses the cluster default. Must support ReadWriteMany."""
    access_modes: list[AccessMode] = Field(default=[AccessMode.READ_WRITE_MANY], min_length=1)
    """Access modes of the created claim. ReadWriteOnce only works when every vLLM pod is on one node."""
    existing_claim: DnsSubdomain | None = None
    """Adopt this PersistentVolumeClaim (same namespace) instead of creating one."""
    retain_on_delete: bool = True
    """Keep the claim (and the generated seed Secret) when the TieredKVCache is deleted."""
    sub_path: str | None = Field(default=None, min_length=1, max_length=1024, pattern=r"^[^/]")
    """Directory inside the volume that holds this cache's files, relative to it. Unset: the volume root."""

    @field_validator("sub_path")
    @classmethod
    def _relative_clean_path(cls, value: str | None) -> str | None:
        if value is not None and any(part in {"", ".", ".."} for part in value.split("/")):
            raise ValueError(f"subPath {value!r} must be a relative path without empty, '.' or '..' segments")
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
    max_tracker_size: PositiveInt = 64000
    """Blocks whose request counts the agent tracks (least recently seen are forgotten first)."""


class AgentSpec(CamelModel):
    """The per-node agent DaemonSet: GC, integrity sweeps, metrics, and the data path in agent mode."""

    image: str | None = Field(default=None, min_length=1)
    """Agent image; unset uses the image matching the operator's version."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Nodes the agents run on: every node that may run a matching vLLM pod."""
    tolerations: list[dict[str, JsonValue]] = Field(default_factory=list)
    """Pod tolerations (core/v1 Toleration objects), e.g. for tainted GPU nodes."""
    resources: dict[str, JsonValue] = Field(default_factory=dict)
    """Container resources (core/v1 ResourceRequirements) of the agent."""
    read_threads: int = Field(default=4, ge=1, le=1024)
    """I/O threads that serve loads from the shared volume."""
    write_threads: int = Field(default=4, ge=1, le=1024)
    """I/O threads that store blocks to the shared volume."""
    ram_tier_bytes: ByteCount = 0
    """Node RAM the agent keeps recently used blocks in (agent mode only); 0 disables the RAM tier."""
    socket_dir: str = Field(default="/var/run/tieredkv", pattern=r"^/.*$", max_length=512)
    """Host directory for the agent sockets; each cache uses <socketDir>/<namespace>.<name>/agent.sock."""
    store_admission: StoreAdmission = StoreAdmission()
    """Admission filter for stores to the shared volume (agent mode only)."""
    on_profile_mismatch: Literal["reject", "warn"] = "reject"
    """What an agent does with a vLLM instance whose NONE_HASH fingerprint differs from the cache's: `reject`
    its Hello (the instance then runs without the shared tier) or `warn` and serve it. Either way the agent
    records it in status.profileMismatches and SeedConsistent turns False (agent mode only)."""


class CapacitySpec(CamelModel):
    """How much of the volume the cache may use; the agents' GC leader keeps usage between the watermarks."""

    max_bytes: ByteCount | None = None
    """Bytes the cache may use. Unset: 90% of the volume (storage.size, or the adopted claim's capacity)."""
    high_watermark: float = Field(default=0.9, gt=0, le=1)
    """Fraction of maxBytes at which GC starts deleting least recently used blocks."""
    low_watermark: float = Field(default=0.8, ge=0, lt=1)
    """Fraction of maxBytes GC deletes down to. Must be below highWatermark."""

    @model_validator(mode="after")
    def _low_below_high(self) -> Self:
        if self.low_watermark >= self.high_watermark:
            raise ValueError(
                f"capacity.lowWatermark ({self.low_watermark}) must be below "
                f"capacity.highWatermark ({self.high_watermark})"
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

        Returns None when neither is known (an adopted claim whose capacity was not observed yet).
        """
        if self.capacity.max_bytes is not None:
            return self.capacity.max_bytes
        basis = self.storage.size_bytes() if volume_bytes is None else volume_bytes
        return None if basis is None else basis * DEFAULT_MAX_BYTES_PERCENT // 100


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
