"""Builders of the claim and the seed Secret: the two children `retainOnDelete` may keep (pure)."""

from __future__ import annotations

from typing import Any

from tieredkv_operator import names
from tieredkv_operator.names import CacheRef
from tieredkv_operator.spec import TieredKVCacheSpec

Manifest = dict[str, Any]


def _meta(cache: CacheRef, name: str, component: str, owned: bool) -> Manifest:
    meta: Manifest = {
        "name": name,
        "namespace": cache.namespace,
        "labels": names.labels(cache.name, component),
    }
    if owned:
        meta["ownerReferences"] = [cache.owner_reference()]
    return meta


def claim(cache: CacheRef, spec: TieredKVCacheSpec) -> Manifest | None:
    """The PersistentVolumeClaim to create, or None when the spec adopts an existing claim."""
    storage = spec.storage
    if storage.existing_claim is not None:
        return None
    body: Manifest = {
        "accessModes": [m.value for m in storage.access_modes],
        "resources": {"requests": {"storage": storage.size}},
        "volumeMode": "Filesystem",
    }
    if storage.storage_class_name is not None:
        body["storageClassName"] = storage.storage_class_name
    name = names.pvc_name(cache.name, spec)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(cache, name, "storage", owned=not storage.retain_on_delete),
        "spec": body,
    }


def seed_secret(cache: CacheRef, spec: TieredKVCacheSpec, seed: str) -> Manifest | None:
    """The seed Secret the operator owns, holding `seed`; None when the user supplies a secretRef.

    The caller passes the literal `hashSeed.value`, or a freshly generated seed that it only uses to
    create a Secret that does not exist yet (a generated seed is never rotated).
    """
    if spec.hash_seed.secret_ref is not None:
        return None
    name, key = names.seed_secret(cache.name, spec)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _meta(cache, name, "seed", owned=not spec.storage.retain_on_delete),
        "stringData": {key: seed},
    }


def seed_backup(cache: CacheRef, spec: TieredKVCacheSpec, seed: str) -> Manifest | None:
    """The backup of a generated seed, owned by the cache: the seed Secret is restored from it, with the same
    value, if someone deletes it. None unless the operator generates the seed (no secretRef, no value)."""
    if spec.hash_seed.secret_ref is not None or spec.hash_seed.value is not None:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _meta(cache, names.seed_backup_name(cache.name), "seed-backup", owned=True),
        "stringData": {names.SEED_KEY_DEFAULT: seed},
    }
