"""The seed step of a reconcile: read the seed Secret and its backup, plan (pure, `seed.py`), write."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from typing import Any

from tieredkv_operator import seed as seed_mod
from tieredkv_operator.kube import SEED_FIELD_MANAGER, Kube
from tieredkv_operator.resources import names, storage
from tieredkv_operator.resources.names import CacheRef
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
    if write:
        _carry_out(kube, cache, spec, plan, attempt, live=live)
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
) -> None:
    key = names.seed_secret(cache.name, spec)[1]
    if plan.create_secret is not None:
        fresh = storage.seed_secret(cache, spec, plan.create_secret)
        assert fresh is not None
        attempt("Secret", lambda: kube.create(fresh, field_manager=SEED_FIELD_MANAGER))
    elif plan.replace_secret is not None and live is not None:
        replaced = {**live, "data": {**(live.get("data") or {}), key: _b64(plan.replace_secret)}}
        attempt("Secret", lambda: kube.replace(replaced, field_manager=SEED_FIELD_MANAGER))
    elif live is not None:  # keep its value, keep labels and ownerReferences current
        meta_only = storage.seed_secret(cache, spec, "")
        assert meta_only is not None
        meta_only.pop("stringData")
        meta_only.pop("type")
        # The resourceVersion read: if the Secret was deleted meanwhile, this fails instead of creating
        # an empty one (the next pass restores it from the backup).
        meta_only["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        attempt("Secret", lambda: kube.apply(meta_only))
    if plan.backup is not None:
        backup = storage.seed_backup(cache, spec, plan.backup)
        assert backup is not None
        backup["data"] = {k: _b64(v) for k, v in backup.pop("stringData").items()}
        attempt("Secret", lambda: kube.apply(backup))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
