"""Names that appear in a TieredKVCache's status: phases, condition types and condition reasons.

These strings are an API: dashboards and `kubectl wait --for=condition=Ready` depend on them. Add new ones,
never rename. Reasons are CamelCase, as metav1.Condition requires.
"""

from enum import StrEnum
from typing import Final


class Phase(StrEnum):
    """The one-word summary shown in `kubectl get tkv` (derived from the conditions, never decided alone)."""

    PENDING = "Pending"
    PROGRESSING = "Progressing"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class ConditionType(StrEnum):
    READY = "Ready"
    CONFIG_VALID = "ConfigValid"
    STORAGE_READY = "StorageReady"
    AGENTS_READY = "AgentsReady"
    SEED_CONSISTENT = "SeedConsistent"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


# Ready
RECONCILED: Final = "Reconciled"
COMPONENTS_NOT_READY: Final = "ComponentsNotReady"
RECONCILE_ERROR: Final = "ReconcileError"

# ConfigValid
CONFIG_ACCEPTED: Final = "ConfigAccepted"
INVALID_SPEC: Final = "InvalidSpec"
UNSUPPORTED_VLLM_VERSION: Final = "UnsupportedVllmVersion"

# StorageReady
CLAIM_BOUND: Final = "ClaimBound"
CLAIM_PENDING: Final = "ClaimPending"
CLAIM_NOT_FOUND: Final = "ClaimNotFound"
CLAIM_LOST: Final = "ClaimLost"
CLAIM_TERMINATING: Final = "ClaimTerminating"
CLAIM_DELETED: Final = "ClaimDeleted"
ACCESS_MODE_MISMATCH: Final = "AccessModeMismatch"

# AgentsReady
ALL_AGENTS_READY: Final = "AllAgentsReady"
AGENTS_PROGRESSING: Final = "AgentsProgressing"
AGENTS_UNAVAILABLE: Final = "AgentsUnavailable"
NO_MATCHING_NODES: Final = "NoMatchingNodes"

# SeedConsistent
SEED_SECRET_READY: Final = "SeedSecretReady"
SEED_SECRET_MISSING: Final = "SeedSecretMissing"
SEED_KEY_MISSING: Final = "SeedKeyMissing"
SEED_INVALID: Final = "SeedInvalid"
SEED_MISMATCH: Final = "SeedMismatch"
PROFILE_MISMATCH: Final = "ProfileMismatch"
SEED_CHANGED: Final = "SeedChanged"

REASONS: Final[tuple[str, ...]] = (
    RECONCILED,
    COMPONENTS_NOT_READY,
    RECONCILE_ERROR,
    CONFIG_ACCEPTED,
    INVALID_SPEC,
    UNSUPPORTED_VLLM_VERSION,
    CLAIM_BOUND,
    CLAIM_PENDING,
    CLAIM_NOT_FOUND,
    CLAIM_LOST,
    CLAIM_TERMINATING,
    CLAIM_DELETED,
    ACCESS_MODE_MISMATCH,
    ALL_AGENTS_READY,
    AGENTS_PROGRESSING,
    AGENTS_UNAVAILABLE,
    NO_MATCHING_NODES,
    SEED_SECRET_READY,
    SEED_SECRET_MISSING,
    SEED_KEY_MISSING,
    SEED_INVALID,
    SEED_MISMATCH,
    PROFILE_MISMATCH,
    SEED_CHANGED,
)
"""Every reason above, for tests and documentation."""
