"""One level-based, idempotent reconcile of a TieredKVCache: build the desired children with the pure
builders, apply them, observe them, and compute the status. Called from kopf handler threads (create,
update, resume and the drift timer), never concurrently for the same cache (the handlers hold a lock).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tieredkv_operator import conditions as c
from tieredkv_operator import metrics
from tieredkv_operator import status as status_mod
from tieredkv_operator.kube import SEED_FIELD_MANAGER, Kube, KubeError
from tieredkv_operator.quantity import parse_quantity
from tieredkv_operator.resources import agents, names, rbac, storage, validation, vllm_configmap
from tieredkv_operator.resources.names import CacheRef
from tieredkv_operator.settings import OperatorSettings
from tieredkv_operator.spec import TieredKVCacheSpec
from tieredkv_operator.vllm_lines import supported_lines

Obj = dict[str, Any]
Event = tuple[str, str, str]  # (type, reason, message)


@dataclass
class Outcome:
    status: Obj
    events: list[Event] = field(default_factory=list)


def parse_spec(body: Obj) -> tuple[TieredKVCacheSpec | None, str | None, str]:
    """(spec, None, "") or (None, error message, condition reason)."""
    spec, errors = validation.parse_spec(body.get("spec"))
    if spec is not None:
        return spec, None, ""
    version = ((body.get("spec") or {}).get("vllm") or {}).get("version")
    unsupported = isinstance(version, str) and version not in supported_lines()
    return None, "; ".join(errors), c.UNSUPPORTED_VLLM_VERSION if unsupported else c.INVALID_SPEC


def _apply_all(
    kube: Kube,
    cache: CacheRef,
    spec: TieredKVCacheSpec,
    *,
    settings: OperatorSettings,
    observed: status_mod.Observed,
    note: Callable[[str, KubeError], None],
) -> None:
    """Apply every child; a failure is noted and the others still go ahead."""

    def attempt(what: str, action: Callable[[], Obj | None]) -> Obj | None:
        try:
            return action()
        except KubeError as err:
            note(what, err)
            return None

    _ensure_seed(kube, cache, spec, attempt)
    if (claim := storage.claim(cache, spec)) is not None:
        attempt("PersistentVolumeClaim", lambda: kube.apply(claim))
    observed.pvc = attempt(
        "PersistentVolumeClaim",
        lambda: kube.get("v1", "PersistentVolumeClaim", cache.namespace, names.pvc_name(cache.name, spec)),
    )
    config_map = vllm_configmap.config_map(cache, spec)
    attempt("ConfigMap", lambda: kube.apply(config_map))
    observed.config_hash = config_map["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH]
    children: list[Obj] = [
        rbac.service_account(cache),
        rbac.role(cache),
        rbac.role_binding(cache),
        agents.metrics_service(cache),
    ]
    for child in children:
        attempt(child["kind"], partial(kube.apply, child))
    capacity = ((observed.pvc or {}).get("status") or {}).get("capacity", {}).get("storage")
    max_bytes = spec.effective_max_bytes(parse_quantity(capacity) if capacity else None)
    template = agents.pod_template(
        cache,
        spec,
        image=spec.agent.image or settings.agent_image,
        max_bytes=max_bytes,
        config_hash=observed.config_hash,
        pod_annotations=settings.agent_pod_annotations,
    )
    observed.daemon_set = attempt("DaemonSet", lambda: kube.apply(agents.daemon_set(cache, spec, template)))


def _ensure_seed(kube: Kube, cache: CacheRef, spec: TieredKVCacheSpec, attempt: Any) -> None:
    """A literal seed is applied; a generated one is created once and never replaced."""
    if spec.hash_seed.secret_ref is not None:
        return
    if spec.hash_seed.value is not None:
        literal = storage.seed_secret(cache, spec, spec.hash_seed.value)
        if literal is not None:
            attempt("Secret", partial(kube.apply, literal))
        return
    fresh = storage.seed_secret(cache, spec, str(secrets.randbelow(2**32)))
    if fresh is None:
        return
    if attempt("Secret", lambda: kube.create(fresh, field_manager=SEED_FIELD_MANAGER)) is None:
        # It existed already: keep its value, keep labels and ownerReferences current.
        meta_only = {k: v for k, v in fresh.items() if k not in ("stringData", "type")}
        attempt("Secret", lambda: kube.apply(meta_only))


def reconcile(kube: Kube, body: Obj, settings: OperatorSettings, now: str, *, apply: bool = True) -> Outcome:
    """Converge the children of the cache in `body` (unless `apply` is False) and compute its status.

    With apply=False nothing is written: the children are only read, for a status refresh after one of
    them (or a pod of the cache) changed. Each call is counted and timed in the operator's metrics.
    """
    with metrics.timed_reconcile(apply) as report:
        outcome = _converge(kube, body, settings, now, apply=apply)
        report(outcome.status)
    return outcome


def _converge(kube: Kube, body: Obj, settings: OperatorSettings, now: str, *, apply: bool) -> Outcome:
    meta = body["metadata"]
    cache = CacheRef(meta["name"], meta["namespace"], meta["uid"], int(meta.get("generation") or 0))
    previous: list[Obj] = (body.get("status") or {}).get("conditions") or []
    spec, error, reason = parse_spec(body)
    observed = status_mod.Observed(
        generation=cache.generation,
        spec=spec,
        spec_error=error,
        spec_error_reason=reason,
        profile_mismatches=dict((body.get("status") or {}).get("profileMismatches") or {}),
    )
    errors: list[str] = []

    def note(what: str, err: KubeError) -> None:
        errors.append(f"{what}: {err}")

    if spec is not None:
        if apply:
            _apply_all(kube, cache, spec, settings=settings, observed=observed, note=note)
        try:
            _observe(kube, cache, spec, observed, children=not apply)
        except KubeError as err:
            note("observe", err)
        observed.apply_error = "; ".join(errors) or None
    new = status_mod.compute_status(cache.name, observed, previous, now)
    return Outcome(status=new, events=status_mod.transition_events(previous, new["conditions"]))


def _observe(
    kube: Kube, cache: CacheRef, spec: TieredKVCacheSpec, observed: status_mod.Observed, *, children: bool
) -> None:
    """Read what the status depends on; `children` also reads what _apply_all would have returned."""
    ns = cache.namespace
    if children:
        observed.pvc = kube.get("v1", "PersistentVolumeClaim", ns, names.pvc_name(cache.name, spec))
        observed.daemon_set = kube.get("apps/v1", "DaemonSet", ns, names.agent_name(cache.name))
        observed.config_hash = vllm_configmap.rendered(cache, spec)[1]
    observed.seed_secret = kube.get("v1", "Secret", ns, names.seed_secret(cache.name, spec)[0])
    observed.pods = kube.list("v1", "Pod", ns, f"{names.LABEL_CACHE}={cache.name}")
