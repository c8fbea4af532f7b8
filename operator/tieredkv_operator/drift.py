"""Drift of a child from its desired object, in the parts the operator owns (pure).

Server-side apply restores the fields the operator sets but never removes fields someone else added: a
nodeSelector entry, a sidecar in the agent pod template, an extra key in the rendered ConfigMap. A child is
drifted when another field manager holds fields in a part we own (`OWNED_PARTS`); the repair is a PUT of
the live object with those parts replaced by the desired ones, so the API server re-applies its defaults
and keeps what it adds itself (status, metadata, defaulted fields). A dry run first tells whether that PUT
changes anything at all (a manager that only co-owns fields with our values is no drift).
"""

from __future__ import annotations

import copy
from typing import Any, Final

from tieredkv_operator.names import FIELD_MANAGER, SEED_FIELD_MANAGER

Obj = dict[str, Any]
OUR_MANAGERS: Final = frozenset({FIELD_MANAGER, SEED_FIELD_MANAGER})

OWNED_PARTS: Final[dict[str, tuple[str, ...]]] = {
    "DaemonSet": ("spec",),
    "ConfigMap": ("data", "binaryData"),
    "Service": ("spec",),
    "Role": ("rules",),
    "RoleBinding": ("roleRef", "subjects"),
}
"""Top-level parts of each child kind that hold only what the operator wants (no claim: the binder fills
its spec.volumeName)."""


def _ours(entry: Obj) -> bool:
    return entry.get("manager") in OUR_MANAGERS


def foreign_managers(live: Obj) -> list[str]:
    """Field managers other than the operator holding fields in the parts the operator owns."""
    parts = OWNED_PARTS.get(live.get("kind", ""), ())
    found = {
        str(entry.get("manager") or "?")
        for entry in live.get("metadata", {}).get("managedFields") or []
        if not _ours(entry) and any(f"f:{part}" in (entry.get("fieldsV1") or {}) for part in parts)
    }
    return sorted(found)


def repaired(live: Obj, desired: Obj) -> Obj:
    """`live` with the owned parts replaced by `desired`'s and only the operator's managedFields entries."""
    obj = copy.deepcopy(live)
    for part in OWNED_PARTS.get(live.get("kind", ""), ()):
        if part in desired:
            obj[part] = copy.deepcopy(desired[part])
        else:
            obj.pop(part, None)
    meta = obj["metadata"]
    kept = [entry for entry in meta.get("managedFields") or [] if _ours(entry)]
    if kept:
        meta["managedFields"] = kept
    obj.pop("status", None)
    return obj


def differs(live: Obj, result: Obj) -> list[str]:
    """The owned parts in which `result` (a dry-run PUT's answer) differs from `live`."""
    return [part for part in OWNED_PARTS.get(live.get("kind", ""), ()) if live.get(part) != result.get(part)]
