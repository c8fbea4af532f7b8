"""Names, labels and annotations of everything a TieredKVCache owns or touches (pure).

One place for them so the builders, the webhook, the status function and the docs cannot drift apart.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Final

from tieredkv_operator import spec as _spec
from tieredkv_operator.spec import API_VERSION, KIND, TieredKVCacheSpec

PART_OF: Final = "tieredkv"
MANAGED_BY: Final = "tieredkv-operator"
FIELD_MANAGER: Final = "tieredkv-operator"
SEED_FIELD_MANAGER: Final = "tieredkv-operator-seed"
"""Manager of a generated seed's value: it is created once and never re-applied, so later applies of the
Secret's metadata under FIELD_MANAGER cannot remove the value."""

# Labels and annotations under our own prefix.
LABEL_CACHE: Final = "tieredkv.io/cache"
"""On every child, and on injected vLLM pods: the name of the TieredKVCache."""
LABEL_INJECT: Final = "tieredkv.io/inject"
"""Pods opt in to injection with this label set to "true"."""
ANNOTATION_CACHE: Final = "tieredkv.io/cache"
"""On a pod: which TieredKVCache to use when several in its namespace select it."""
ANNOTATION_INJECTED: Final = "tieredkv.io/injected"
"""Stamped by the webhook on a pod it injected (value: the cache name); makes re-admission a no-op."""
ANNOTATION_SKIP_REASON: Final = "tieredkv.io/skip-reason"
"""Stamped by the webhook on an opted-in pod it left alone, with a kebab-case reason."""
ANNOTATION_CONFIG_HASH: Final = "tieredkv.io/config-hash"
"""On the agent pod template (rolls the DaemonSet on change) and on injected pods (which config they got)."""
ANNOTATION_KV_TRANSFER_CONFIG: Final = "tieredkv.io/kv-transfer-config"
"""On a pod: how its container gets the rendered config. `args` (default): the webhook appends
`--kv-transfer-config` to a recognised vLLM command; `env`: the webhook leaves command and args alone and only
provides the config as TIEREDKV_KV_TRANSFER_CONFIG, which the container passes on itself."""
ANNOTATION_REGENERATE_SEED: Final = "tieredkv.io/regenerate-seed"
"""On a cache: each new value asks the operator for a new random seed (recorded in status and an Event)."""
ANNOTATION_ALLOW_ORPHANING: Final = "tieredkv.io/allow-orphaning"
"""On a cache: admit a change that orphans the stored blocks (subPath, seed, hashAlgo, vLLM line)."""
ANNOTATION_RECREATE_CLAIM: Final = "tieredkv.io/recreate-claim"
"""On a cache: each new value lets the operator create a new, empty claim after the old one was deleted."""

METRICS_PORT: Final = _spec.METRICS_PORT
"""The agents' metrics port (defined with the spec, whose events ports must not take it)."""
EVENTS_PORT_NAME: Final = "kv-events"
"""Name of the agents' KV-events PUB port (container and Service)."""
EVENTS_REPLAY_PORT_NAME: Final = "kv-replay"
"""Name of the agents' KV-events replay port."""
EVENTS_SUMMARY_PORT_NAME: Final = "kv-summary"
"""Name of the agents' membership-summary HTTP port."""
STORE_MOUNT_PATH: Final = "/var/lib/tieredkv/store"
"""Where the agents mount the shared volume."""
CONFIG_KEY: Final = "kv-transfer-config.json"
"""Key of the rendered --kv-transfer-config JSON in the cache's ConfigMap."""
SEED_KEY_DEFAULT: Final = "seed"


@dataclass(frozen=True)
class CacheRef:
    """Identity of one TieredKVCache object, as the builders need it."""

    name: str
    namespace: str
    uid: str
    generation: int = 0

    def owner_reference(self) -> dict[str, object]:
        """The ownerReference every garbage-collected child carries (controller, no blocking deletion)."""
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def child_name(cache: str, suffix: str = "") -> str:
    return f"tieredkv-{cache}" + (f"-{suffix}" if suffix else "")


def pvc_name(cache: str, spec: TieredKVCacheSpec) -> str:
    return spec.storage.existing_claim or child_name(cache)


def seed_secret(cache: str, spec: TieredKVCacheSpec) -> tuple[str, str]:
    """(Secret name, key) holding the seed: the user's secretRef, else the Secret the operator generates."""
    ref = spec.hash_seed.secret_ref
    if ref is not None:
        return ref.name, ref.key
    return child_name(cache, "seed"), SEED_KEY_DEFAULT


def seed_backup_name(cache: str) -> str:
    """The cache-owned copy of a generated seed, from which a deleted seed Secret is restored."""
    return child_name(cache, "seed-backup")


def config_map_name(cache: str) -> str:
    return child_name(cache, "vllm")


def agent_name(cache: str) -> str:
    """DaemonSet, ServiceAccount, Role and RoleBinding of the agents share this name."""
    return child_name(cache, "agent")


def metrics_service_name(cache: str) -> str:
    return child_name(cache, "metrics")


def gc_lease_name(cache: str) -> str:
    return child_name(cache, "gc")


CSI_DRIVER = "socket.tieredkv.io"
"""The chart's CSI driver that publishes a cache's socket directory into pods (agent socketVolume: csi)."""


def socket_host_dir(socket_dir: str, namespace: str, cache: str) -> str:
    """Host directory shared by a cache's agent and its vLLM pods on one node."""
    return posixpath.join(socket_dir, f"{namespace}.{cache}")


def labels(cache: str, component: str) -> dict[str, str]:
    """Recommended app.kubernetes.io labels plus ours; selectors use only the stable subset."""
    return {
        **selector_labels(cache, component),
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector_labels(cache: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tieredkv",
        "app.kubernetes.io/instance": cache,
        "app.kubernetes.io/component": component,
        LABEL_CACHE: cache,
    }
