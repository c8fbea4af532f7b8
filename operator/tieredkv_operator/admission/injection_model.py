"""Value types of the pod-injection webhook: caches as it sees them, skip reasons and its result (pure).

Built and consumed on kopf's admission handler threads; nothing here does I/O.
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from tieredkv_operator.admission.validation import parse_spec
from tieredkv_operator.resources.vllm_config import config_hash, render_kv_transfer_config
from tieredkv_operator.spec import TieredKVCacheSpec
from tieredkv_operator.spec_vllm import LabelSelector


class SkipReason(StrEnum):
    """Why an opted-in pod was left alone; the value goes into the tieredkv.io/skip-reason annotation."""

    CACHE_NOT_FOUND = "cache-not-found"
    """No TieredKVCache selects the pod, or the tieredkv.io/cache annotation names none that exists."""
    CACHE_NOT_SELECTED = "cache-not-selected"
    """The cache named by the annotation exists, but its vllm.selector does not match the pod."""
    CACHE_AMBIGUOUS = "cache-ambiguous"
    """Several caches select the pod and no tieredkv.io/cache annotation picks one."""
    CACHE_INVALID = "cache-invalid"
    """The chosen cache's spec does not validate, so there is nothing sound to inject."""
    CONTAINER_NOT_FOUND = "container-not-found"
    """The pod has no container named spec.vllm.container."""
    SEED_CONFLICT = "seed-conflict"
    """The container already sets PYTHONHASHSEED to something other than the cache's seed Secret."""
    COMMAND_NOT_RECOGNISED = "command-not-recognised"
    """The container's command + args are not a direct vLLM server invocation (e.g. `sh -c`)."""
    KV_TRANSFER_CONFIG_PRESENT = "kv-transfer-config-present"
    """The container already passes its own --kv-transfer-config."""
    VOLUME_CONFLICT = "volume-conflict"
    """A volume, mount path, env var or init container of ours collides with a different one in the pod."""


@dataclass(frozen=True)
class CacheView:
    """A valid TieredKVCache as the webhook needs it."""

    name: str
    namespace: str
    spec: TieredKVCacheSpec
    config_hash: str
    """Hash of the rendered --kv-transfer-config (the same value the operator writes to status.configHash)."""

    @property
    def selector(self) -> LabelSelector:
        return self.spec.vllm.selector


@dataclass(frozen=True)
class InvalidCache:
    """A TieredKVCache whose spec does not validate: pods that choose it are skipped with cache-invalid."""

    name: str
    namespace: str
    errors: tuple[str, ...]
    selector: LabelSelector | None
    """The spec's vllm.selector when that part alone parses, so the cache can still be matched to pods."""


@dataclass(frozen=True)
class InjectionResult:
    """What the mutating webhook does with one pod."""

    pod: dict[str, Any]
    """The pod to admit: a deep copy, injected, or annotated with the skip reason only."""
    cache: str | None
    """The TieredKVCache the pod was matched to, if any."""
    skip_reason: SkipReason | None
    """Set when an opted-in pod was left alone (the Warning Event's reason)."""
    message: str
    """One human sentence for the Event (Warning when skip_reason or warnings are set)."""
    changed: bool
    """Whether `pod` differs from the input (False: admit unpatched)."""
    warnings: tuple[str, ...] = ()
    """Things a successful injection could not do fully (also included in `message`)."""


class InjectionSkipError(Exception):
    """Raised inside the injection to give up on a pod with a reason and an actionable message."""

    def __init__(self, reason: SkipReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def cache_view(body: dict[str, Any]) -> CacheView | InvalidCache:
    """The webhook's view of a TieredKVCache object (as kopf or the API gives it, camelCase)."""
    metadata = body.get("metadata") or {}
    name, namespace = str(metadata.get("name") or ""), str(metadata.get("namespace") or "")
    spec, errors = parse_spec(body.get("spec"))
    if spec is None:
        return InvalidCache(name, namespace, tuple(errors), _best_effort_selector(body))
    try:
        rendered = render_kv_transfer_config(spec, name=name, namespace=namespace)
    except ValueError as err:
        return InvalidCache(name, namespace, (str(err),), spec.vllm.selector)
    return CacheView(name=name, namespace=namespace, spec=spec, config_hash=config_hash(rendered))


def _best_effort_selector(body: dict[str, Any]) -> LabelSelector | None:
    vllm = (body.get("spec") or {}).get("vllm") if isinstance(body.get("spec"), dict) else None
    raw = vllm.get("selector") if isinstance(vllm, dict) else None
    if raw is None:
        return None
    try:
        return LabelSelector.model_validate(raw)
    except ValidationError:
        return None
