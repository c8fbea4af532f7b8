"""The status block of a TieredKVCache, as the operator writes it (pure data, no computation)."""

from pydantic import Field, NonNegativeInt

from tieredkv_operator.conditions import ConditionStatus, Phase
from tieredkv_operator.model_base import LenientCamelModel


class Condition(LenientCamelModel):
    """One observation in metav1.Condition shape."""

    type: str = Field(min_length=1, max_length=316)
    """Ready, ConfigValid, StorageReady, AgentsReady or SeedConsistent."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    """CamelCase machine-readable cause of the last transition."""
    message: str = Field(default="", max_length=32768)
    """Human-readable detail."""
    last_transition_time: str = Field(json_schema_extra={"format": "date-time"})
    """RFC 3339 time the status last changed."""
    observed_generation: NonNegativeInt | None = None
    """metadata.generation the condition was computed from."""


class AgentCounts(LenientCamelModel):
    """Node agents of this cache (one per node that may run a matching vLLM pod)."""

    desired: NonNegativeInt = 0
    """Agents the DaemonSet wants scheduled."""
    ready: NonNegativeInt = 0
    """Agents that are ready."""


class TieredKVCacheStatus(LenientCamelModel):
    """Observed state of a TieredKVCache."""

    observed_generation: NonNegativeInt | None = None
    """metadata.generation of the spec this status describes."""
    phase: Phase | None = None
    """One-word summary derived from the conditions."""
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Ready, ConfigValid, StorageReady, AgentsReady, SeedConsistent."""
    pvc_name: str | None = None
    """The PersistentVolumeClaim holding the shared tier (created or adopted)."""
    seed_secret_name: str | None = None
    """The Secret holding the PYTHONHASHSEED value injected into vLLM pods."""
    agents: AgentCounts = Field(default_factory=AgentCounts)
    """Desired and ready node agents."""
    injected_pods: NonNegativeInt = 0
    """vLLM pods currently running with this cache's configuration injected."""
    config_hash: str | None = None
    """Hash of the rendered --kv-transfer-config; pods with another hash run a stale configuration."""
