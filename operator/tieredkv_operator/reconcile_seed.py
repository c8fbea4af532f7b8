"""The seed step of a reconcile: read the seed Secret and its backup, plan (pure, `seed.py`), write."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from typing import Any

from tieredkv_operator import names
from tieredkv_operator import seed as seed_mod
from tieredkv_operator.kube import SEED_FIELD_MANAGER, Kube
from tieredkv_operator.names import CacheRef
from tieredkv_operator.resources import storage
from tieredkv_operator.spec import TieredKVCacheSpec

Obj = dict[str, Any]
Attempt = Callable[[str, Callable[[], Obj | None]], Obj | None]


def _random_seed() -> str:
    return str(secrets.randbelow(2**32))


def ensure_seed(
    kube: Kube, cache: CacheRef, spec: TieredKVCacheSpec, body: Obj, *, write: bool, attempt: Attempt
) -> seed_mod.SeedPlan:
    """Plan the seed and, when `write`, carry the plan out. Without `write` (a status refresh) only the
    problem the plan reports counts: nothing is recorded that was not written."""
    status = body.get("status") or {}
    name, key = names.seed_secret(cache.name, spec)
    if spec.hash_seed.secret_ref is not None:
        value = seed_mod.secret_value(kube.get("v1", "Secret", cache.namespace, name), key)
        return seed_mod.plan_user_seed(value, f"Secret {name}/{key}", status, cache.uid)
    if spec.hash_seed.value is not None:
        literal = storage.seed_secret(cache, spec, spec.hash_seed.value)
        if write and literal is not None:
            attempt("Secret", lambda: kube.apply(literal))
        return seed_mod.plan_user_seed(spec.hash_seed.value, "spec.hashSeed.value", status, cache.uid)
    plan, live = _plan_generated(kube, cache, spec, body, write=write)
    plan.secret, plan.secret_read = live, True
    if write:
        plan.secret = _carry_out(kube, cache, spec, plan, attempt, live=live)
    else:
        plan.recorded, plan.events = {}, []
    return plan


def _plan_generated(
    kube: Kube, cache: CacheRef, spec: TieredKVCacheSpec, body: Obj, *, write: bool
) -> tuple[seed_mod.SeedPlan, Obj | None]:
    status = body.get("status") or {}
    name, key = names.seed_secret(cache.name, spec)
    backup_name = names.seed_backup_name(cache.name)
    secret = kube.get("v1", "Secret", cache.namespace, name)
    asked = ((body.get("metadata") or {}).get("annotations") or {}).get(names.ANNOTATION_REGENERATE_SEED)
    handled = (status.get("handledRequests") or {}).get(names.ANNOTATION_REGENERATE_SEED)
    state = seed_mod.SeedState(
        secret=name,
        backup=backup_name,
        secret_exists=secret is not None,
        value=seed_mod.secret_value(secret, key),
        backup_value=seed_mod.secret_value(kube.get("v1", "Secret", cache.namespace, backup_name), key),
        recorded_fingerprint=status.get("seedFingerprint"),
        recorded_source=status.get("seedSource"),
        request=asked if write and asked and asked != handled else None,
        salt=cache.uid,
    )
    return seed_mod.plan_generated(state, _random_seed), secret


def _carry_out(
    kube: Kube,
    cache: CacheRef,
    spec: TieredKVCacheSpec,
    plan: seed_mod.SeedPlan,
    attempt: Attempt,
    *,
    live: Obj | None,
) -> Obj | None:
    """Write what the plan says, the backup first (a seed is never only in one place); return the seed
    Secret as written (or as read, when nothing was written to it)."""
    key = names.seed_secret(cache.name, spec)[1]
    if plan.backup is not None:
        backup = storage.seed_backup(cache, spec, plan.backup)
        assert backup is not None
        backup["data"] = {k: _b64(v) for k, v in backup.pop("stringData").items()}
        attempt("Secret", lambda: kube.apply(backup))
    if plan.create_secret is not None:
        fresh = storage.seed_secret(cache, spec, plan.create_secret)
        assert fresh is not None
        return attempt("Secret", lambda: kube.create(fresh, field_manager=SEED_FIELD_MANAGER)) or live
    if plan.replace_secret is not None and live is not None:
        replaced = {**live, "data": {**(live.get("data") or {}), key: _b64(plan.replace_secret)}}
        return attempt("Secret", lambda: kube.replace(replaced, field_manager=SEED_FIELD_MANAGER)) or live
    if live is not None:  # keep its value, keep labels and ownerReferences current
        built = storage.seed_secret(cache, spec, "")
        assert built is not None
        meta = built["metadata"]
        # A merge patch, not an apply: if the Secret was deleted meanwhile, it is not recreated empty
        # (the next pass restores it from the backup).
        patch = {"metadata": {"labels": meta["labels"], "ownerReferences": meta.get("ownerReferences")}}
        if _needs_patch(live, patch["metadata"]):
            attempt("Secret", lambda: kube.merge_patch("v1", "Secret", cache.namespace, meta["name"], patch))
    return live


def _needs_patch(live: Obj, wanted: Obj) -> bool:
    meta = live.get("metadata") or {}
    labels = meta.get("labels") or {}
    missing = any(labels.get(k) != v for k, v in wanted["labels"].items())
    return missing or (meta.get("ownerReferences") or None) != wanted["ownerReferences"]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
