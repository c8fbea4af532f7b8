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


class ProfileMismatchReport(LenientCamelModel):
    """The last Hello a node's agent refused (or accepted with a warning) for a NONE_HASH mismatch."""

    instance: str = ""
    """The vLLM instance that connected: `<pod>/<pid>-<suffix>`."""
    offered_fingerprint: str = ""
    """The fingerprint of the instance's NONE_HASH (16 hex digits; the seed is never sent)."""
    expected_fingerprint: str = ""
    """The fingerprint the agent derives from the cache's seed, hash algorithm and vLLM line."""
    action: str = ""
    """`reject` or `warn`: the agent's agent.onProfileMismatch setting at the time."""
    count: NonNegativeInt = 0
    """Mismatched Hellos on this node since its agent started."""
    last_seen: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    """When the last one happened (RFC 3339)."""


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
    profile_mismatches: dict[str, ProfileMismatchReport] = Field(default_factory=dict)
    """By node name, written by that node's agent: the last Hello whose NONE_HASH fingerprint differed.
    A report from the last 15 minutes turns SeedConsistent False (reason ProfileMismatch)."""
    seed_fingerprint: str | None = None
    """A salted, stretched hash of the seed in use (never the seed): a seed changed by hand is noticed."""
    seed_source: str | None = None
    """Where the seed comes from: `Secret <name>/<key>` or `spec.hashSeed.value`."""
    claim_uid: str | None = None
    """UID of the claim the cache uses: once it is gone, no new claim is created unless asked for."""
    store_profile: str | None = None
    """What names the stored blocks (subPath, hashAlgo, vLLM line); a change orphans them and is recorded."""
    handled_requests: dict[str, str] = Field(default_factory=dict)
    """Annotation -> the value the operator last acted on (tieredkv.io/regenerate-seed, recreate-claim)."""
