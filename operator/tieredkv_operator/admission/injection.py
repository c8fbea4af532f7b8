"""The mutating webhook's pod injection: wire an opted-in vLLM pod to its TieredKVCache (pure).

`inject(pod, caches, plugin_image=...)` runs on kopf's admission handler threads for every pod CREATE, so
it is fast and pure: no kopf, no API client, no I/O. The caller lists the TieredKVCaches of the pod's
namespace (as `cache_view(body)`) and turns the result into a patch plus, for skips, a Warning Event.

Rules:

* Only pods labelled `tieredkv.io/inject: "true"` are considered; a pod already annotated
  `tieredkv.io/injected` is admitted unchanged (re-admission is a no-op).
* Choosing the cache: with the annotation `tieredkv.io/cache: <name>`, that cache must exist in the
  namespace (else `cache-not-found`) and its `vllm.selector` must still match the pod (else
  `cache-not-selected`): the selector is the cache owner's say over which pods share the volume. Without the
  annotation exactly one cache may select the pod (none: `cache-not-found`, several: `cache-ambiguous`).
  Invalid caches take part in the choice when their selector parses; choosing one gives `cache-invalid`.
* The edit is all or nothing: a pod that cannot be injected completely gets only the annotation
  `tieredkv.io/skip-reason` (and, once a cache was chosen, the label `tieredkv.io/cache`, so the operator
  finds it for the SeedConsistent condition). See `injection_wiring` for what an injection adds and
  `vllm_command` for the recognised vLLM command lines (`sh -c` strings are not edited); a pod annotated
  `tieredkv.io/kv-transfer-config: env` passes the config on itself and its command is not read.
"""

import copy
from collections.abc import Sequence
from typing import Any

from tieredkv_operator import names
from tieredkv_operator.admission.injection_model import (
    CacheView,
    InjectionResult,
    InjectionSkipError,
    InvalidCache,
    SkipReason,
    cache_view,
)
from tieredkv_operator.admission.injection_wiring import SeedState, seed_state, wire
from tieredkv_operator.admission.label_selector import selector_matches
from tieredkv_operator.admission.pod_edit import EditConflictError, JsonDict, child_dict, items

AnyCache = CacheView | InvalidCache


def inject(pod: dict[str, Any], caches: Sequence[AnyCache], *, plugin_image: str) -> InjectionResult:
    """The pod to admit for `pod` (never mutated) given the caches of its namespace."""
    metadata = pod.get("metadata") or {}
    labels, annotations = _strings(metadata.get("labels")), _strings(metadata.get("annotations"))
    if labels.get(names.LABEL_INJECT) != "true":
        return _unchanged(pod, None, f"pod is not labelled {names.LABEL_INJECT}=true")
    if names.ANNOTATION_INJECTED in annotations:
        cache = annotations[names.ANNOTATION_INJECTED]
        return _unchanged(pod, cache, f"pod is already injected with {cache!r}")
    chosen: AnyCache | None = None
    try:
        chosen = choose_cache(labels, annotations, caches, namespace=metadata.get("namespace"))
        if isinstance(chosen, InvalidCache):
            raise InjectionSkipError(
                SkipReason.CACHE_INVALID,
                f"TieredKVCache {chosen.name!r} is invalid ({'; '.join(chosen.errors[:3])}); fix it and "
                "re-create the pod",
            )
        return _injected(pod, chosen, plugin_image)
    except InjectionSkipError as skip:
        return _skipped(pod, skip, cache=chosen.name if chosen else None)
    except EditConflictError as conflict:
        clash = InjectionSkipError(SkipReason.VOLUME_CONFLICT, str(conflict))
        return _skipped(pod, clash, cache=chosen.name if chosen else None)


def choose_cache(
    labels: dict[str, str],
    annotations: dict[str, str],
    caches: Sequence[AnyCache],
    *,
    namespace: object = None,
) -> AnyCache:
    """The cache for a pod with these labels and annotations; raises InjectionSkipError when there is none.

    `namespace` (the pod's metadata.namespace, often empty in an AdmissionReview) only filters out caches
    of other namespaces when it is set; the caller is expected to pass the caches of the pod's namespace.
    """
    known = isinstance(namespace, str) and namespace != ""
    candidates = [c for c in caches if not known or c.namespace == namespace]
    wanted = annotations.get(names.ANNOTATION_CACHE)
    if wanted:
        found = [c for c in candidates if c.name == wanted]
        if not found:
            raise InjectionSkipError(
                SkipReason.CACHE_NOT_FOUND,
                f"annotation {names.ANNOTATION_CACHE} names {wanted!r}, but no TieredKVCache of that name "
                "exists in the pod's namespace; create it or fix the annotation",
            )
        if isinstance(found[0], CacheView) and not selector_matches(found[0].selector, labels):
            raise InjectionSkipError(
                SkipReason.CACHE_NOT_SELECTED,
                f"TieredKVCache {wanted!r} does not select this pod: its labels do not match "
                "spec.vllm.selector; add the labels or widen the selector",
            )
        return found[0]
    matching = [c for c in candidates if c.selector is not None and selector_matches(c.selector, labels)]
    if len(matching) == 1:
        return matching[0]
    if matching:
        listed = ", ".join(sorted(c.name for c in matching))
        raise InjectionSkipError(
            SkipReason.CACHE_AMBIGUOUS,
            f"TieredKVCaches {listed} all select this pod; pick one with the annotation "
            f"{names.ANNOTATION_CACHE}=<name>",
        )
    raise InjectionSkipError(SkipReason.CACHE_NOT_FOUND, _none_selects(candidates))


def pod_seed_state(pod: dict[str, Any], cache: CacheView) -> SeedState:
    """Whether the pod's vLLM container takes PYTHONHASHSEED from the cache's seed Secret ("ok"), has none
    ("missing", also when the container is absent) or sets something else ("conflict")."""
    container = _container(pod, cache.spec.vllm.container)
    return "missing" if container is None else seed_state(container, cache)


def _injected(pod: dict[str, Any], cache: CacheView, plugin_image: str) -> InjectionResult:
    edited = copy.deepcopy(pod)
    wanted = cache.spec.vllm.container
    container = _container(edited, wanted)
    if container is None:
        present = ", ".join(repr(c.get("name")) for c in items(child_dict(edited, "spec"), "containers"))
        raise InjectionSkipError(
            SkipReason.CONTAINER_NOT_FOUND,
            f"the pod has no container {wanted!r} (it has {present or 'none'}); rename the vLLM container or "
            f"set spec.vllm.container of TieredKVCache {cache.name!r}",
        )
    annotations = child_dict(edited, "metadata").get("annotations") or {}
    config_via = annotations.get(names.ANNOTATION_KV_TRANSFER_CONFIG)
    warnings = wire(child_dict(edited, "spec"), container, cache, plugin_image, config_via=config_via)
    stamps = {names.ANNOTATION_INJECTED: cache.name, names.ANNOTATION_CONFIG_HASH: cache.config_hash}
    _stamp(edited, stamps, cache_label=cache.name)
    child_dict(child_dict(edited, "metadata"), "annotations").pop(names.ANNOTATION_SKIP_REASON, None)
    message = (
        f"injected TieredKVCache {cache.name!r} ({cache.spec.vllm.mode} mode, config {cache.config_hash}) "
        f"into container {wanted!r}"
    )
    if warnings:
        message += "; but " + "; ".join(warnings)
    return InjectionResult(edited, cache.name, None, message, edited != pod, tuple(warnings))


def _unchanged(pod: dict[str, Any], cache: str | None, message: str) -> InjectionResult:
    return InjectionResult(copy.deepcopy(pod), cache, None, message, changed=False)


def _skipped(pod: dict[str, Any], skip: InjectionSkipError, *, cache: str | None) -> InjectionResult:
    edited = copy.deepcopy(pod)
    _stamp(edited, {names.ANNOTATION_SKIP_REASON: skip.reason.value}, cache_label=cache)
    message = f"tieredkv left the pod alone ({skip.reason}): {skip.message}"
    return InjectionResult(edited, cache, skip.reason, message, edited != pod)


def _stamp(pod: JsonDict, annotations: dict[str, str], *, cache_label: str | None) -> None:
    metadata = child_dict(pod, "metadata")
    child_dict(metadata, "annotations").update(annotations)
    if cache_label:
        child_dict(metadata, "labels")[names.LABEL_CACHE] = cache_label


def _container(pod: dict[str, Any], name: str) -> JsonDict | None:
    spec = pod.get("spec")
    found = [c for c in items(spec, "containers") if c.get("name") == name] if isinstance(spec, dict) else []
    return found[0] if found else None


def _none_selects(candidates: Sequence[AnyCache]) -> str:
    message = "no TieredKVCache in the pod's namespace selects its labels; match a cache's spec.vllm.selector"
    invalid = sorted(c.name for c in candidates if isinstance(c, InvalidCache) and c.selector is None)
    if invalid:
        message += f" (not considered, their spec is invalid: {', '.join(invalid)})"
    return message


def _strings(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


__all__ = [
    "CacheView",
    "InjectionResult",
    "InvalidCache",
    "SkipReason",
    "cache_view",
    "choose_cache",
    "inject",
    "pod_seed_state",
]
