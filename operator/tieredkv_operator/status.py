"""Pure computation of a TieredKVCache's status from its spec and its observed children.

No kopf and no API client here (an import-linter contract enforces it). The reconcile gathers an
`Observed` snapshot and calls `compute_status`; conditions keep their lastTransitionTime while their
status does not change.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tieredkv_operator import conditions as c
from tieredkv_operator import names
from tieredkv_operator.admission.injection_model import SkipReason
from tieredkv_operator.conditions import ConditionType, Phase
from tieredkv_operator.spec import MAX_HASH_SEED, TieredKVCacheSpec

Obj = dict[str, Any]
_LISTED_PODS = 5
MISMATCH_WINDOW_S = 900.0
"""How long an agent's report of a mismatched Hello keeps SeedConsistent False (15 minutes)."""
PROGRESS_GRACE_S = 20.0
"""How long a claim may be pending, or agents rolling out, before the condition turns False (a Warning)."""
PROGRESS_REASONS = (c.CLAIM_PENDING, c.AGENTS_PROGRESSING)


@dataclass
class Observed:
    """What the reconcile saw of a cache's children (None: absent)."""

    generation: int
    spec: TieredKVCacheSpec | None
    spec_error: str | None = None
    spec_error_reason: str = c.INVALID_SPEC
    pvc: Obj | None = None
    seed_secret: Obj | None = None
    daemon_set: Obj | None = None
    pods: list[Obj] = field(default_factory=list)  # pods labelled tieredkv.io/cache=<name>
    config_hash: str | None = None
    apply_error: str | None = None
    profile_mismatches: dict[str, Obj] = field(default_factory=dict)
    """status.profileMismatches as the agents wrote it: node -> the last refused or warned Hello."""
    seed_problem: tuple[str, str] | None = None
    """(reason, message) the seed step found (a deleted, lost or hand-edited seed); overrides the rest."""
    claim_deleted: bool = False
    """The claim this cache had is gone, and no new one was asked for (tieredkv.io/recreate-claim)."""
    recorded: Obj = field(default_factory=dict)
    """Status fields the reconcile keeps across passes: seedFingerprint, seedSource, claimUid,
    storeProfile, handledRequests."""


def _cond(kind: ConditionType, ok: bool | None, reason: str, message: str) -> Obj:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return {"type": kind.value, "status": status, "reason": reason, "message": message or reason}


def _storage(o: Observed, spec: TieredKVCacheSpec, name: str) -> Obj:
    kind = ConditionType.STORAGE_READY
    gone = _claim_gone(o, name)
    if gone is not None:
        return gone
    if o.pvc is None:
        missing = (c.CLAIM_NOT_FOUND, "does not exist") if spec.storage.existing_claim else None
        reason, what = missing or (c.CLAIM_PENDING, "is being created")
        return _cond(kind, False, reason, f"{'existingClaim' if missing else 'claim'} {name} {what}")
    phase = (o.pvc.get("status") or {}).get("phase", "Pending")
    if phase == "Lost":
        return _cond(kind, False, c.CLAIM_LOST, f"claim {name} lost its volume")
    if phase != "Bound":
        sc = (o.pvc.get("spec") or {}).get("storageClassName") or "the default class"
        return _cond(kind, False, c.CLAIM_PENDING, f"claim {name} is {phase}: {sc} has not bound it")
    modes = (
        (o.pvc.get("status") or {}).get("accessModes") or (o.pvc.get("spec") or {}).get("accessModes") or []
    )
    desired = int(((o.daemon_set or {}).get("status") or {}).get("desiredNumberScheduled") or 0)
    if "ReadWriteMany" not in modes and desired > 1:
        return _cond(
            kind,
            False,
            c.ACCESS_MODE_MISMATCH,
            f"claim {name} is {'/'.join(modes) or 'not ReadWriteMany'} but agents run on {desired} "
            "nodes: use a ReadWriteMany claim or pin agents and vLLM pods to one node",
        )
    capacity = ((o.pvc.get("status") or {}).get("capacity") or {}).get("storage", "?")
    return _cond(kind, True, c.CLAIM_BOUND, f"claim {name} is Bound ({capacity})")


def _claim_gone(o: Observed, name: str) -> Obj | None:
    """StorageReady for a claim being deleted, or deleted (and not to be replaced silently); else None."""
    kind = ConditionType.STORAGE_READY
    if o.pvc is not None and o.pvc.get("metadata", {}).get("deletionTimestamp"):
        return _cond(
            kind, False, c.CLAIM_TERMINATING, f"claim {name} is being deleted: the cached blocks go with it"
        )
    if o.pvc is None and o.claim_deleted:
        return _cond(
            kind,
            False,
            c.CLAIM_DELETED,
            f"claim {name} was deleted; no new, empty claim is created behind your back: set annotation "
            f"{names.ANNOTATION_RECREATE_CLAIM} to a new value to create one",
        )
    return None


def _agents(o: Observed) -> tuple[Obj, int, int]:
    kind = ConditionType.AGENTS_READY
    if o.daemon_set is None:
        return _cond(kind, False, c.AGENTS_PROGRESSING, "agent DaemonSet is being created"), 0, 0
    st = o.daemon_set.get("status") or {}
    desired, ready = int(st.get("desiredNumberScheduled") or 0), int(st.get("numberReady") or 0)
    updated = int(st.get("updatedNumberScheduled") or 0)
    ds_gen, seen = o.daemon_set["metadata"].get("generation"), st.get("observedGeneration")
    if ds_gen != seen:
        return _cond(kind, None, c.AGENTS_PROGRESSING, "the DaemonSet controller has not seen it yet"), 0, 0
    if desired == 0:
        cond = _cond(kind, False, c.NO_MATCHING_NODES, "no node matches agent.nodeSelector/tolerations")
    elif ready == desired and updated == desired and ds_gen == seen:
        cond = _cond(kind, True, c.ALL_AGENTS_READY, f"{ready}/{desired} agents ready")
    else:
        cond = _cond(kind, False, c.AGENTS_PROGRESSING, f"{ready}/{desired} agents ready, {updated} updated")
    return cond, desired, ready


def _seed_value(secret: Obj, key: str) -> str | None:
    if key in (secret.get("stringData") or {}):
        return str(secret["stringData"][key])
    raw = (secret.get("data") or {}).get(key)
    return None if raw is None else base64.b64decode(raw).decode(errors="replace")


def recent_mismatches(reports: dict[str, Obj], now: str, window_s: float = MISMATCH_WINDOW_S) -> list[str]:
    """One line per node whose agent saw a mismatched Hello within `window_s` before `now`."""
    current = _parse_time(now)
    lines = []
    for node, report in sorted(reports.items()):
        seen = _parse_time(str(report.get("lastSeen", "")))
        if current is None or seen is None or (current - seen).total_seconds() > window_s:
            continue
        got, want = report.get("offeredFingerprint", "?"), report.get("expectedFingerprint", "?")
        lines.append(
            f"node {node}: {report.get('instance', '?')} offered NONE_HASH fingerprint {got}, the agent "
            f"expects {want} ({report.get('action', '?')}ed, {report.get('count', '?')} time(s), "
            f"last at {report['lastSeen']})"
        )
    return lines


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _seed(o: Observed, spec: TieredKVCacheSpec, cache: str, now: str) -> Obj:
    kind = ConditionType.SEED_CONSISTENT
    name, key = names.seed_secret(cache, spec)
    if o.seed_secret is None:
        return _cond(kind, False, c.SEED_SECRET_MISSING, f"Secret {name} does not exist")
    value = _seed_value(o.seed_secret, key)
    if value is None:
        return _cond(kind, False, c.SEED_KEY_MISSING, f"Secret {name} has no key {key!r}")
    if not value.isdigit() or int(value) > MAX_HASH_SEED:
        return _cond(
            kind, False, c.SEED_INVALID, f"Secret {name} key {key!r} is not an integer 0..{MAX_HASH_SEED}"
        )
    conflicting = sorted(
        p["metadata"].get("name") or p["metadata"].get("generateName", "?")
        for p in o.pods
        if (p["metadata"].get("annotations") or {}).get(names.ANNOTATION_SKIP_REASON)
        == SkipReason.SEED_CONFLICT
    )
    if conflicting:
        shown = ", ".join(conflicting[:_LISTED_PODS]) + (" ..." if len(conflicting) > _LISTED_PODS else "")
        return _cond(
            kind,
            False,
            c.SEED_MISMATCH,
            f"{len(conflicting)} pod(s) carry their own PYTHONHASHSEED and will not share blocks: {shown}",
        )
    mismatches = recent_mismatches(o.profile_mismatches, now)
    if mismatches:
        return _cond(kind, False, c.PROFILE_MISMATCH, "; ".join(mismatches[:_LISTED_PODS]))
    return _cond(kind, True, c.SEED_SECRET_READY, f"every pod of this cache uses Secret {name} key {key!r}")


def _injected(o: Observed, cache: str) -> int:
    return sum(
        1
        for p in o.pods
        if (p["metadata"].get("annotations") or {}).get(names.ANNOTATION_INJECTED) == cache
        and not p["metadata"].get("deletionTimestamp")
    )


def compute_status(cache: str, o: Observed, previous: Sequence[Obj], now: str) -> Obj:
    """The full status object to write for cache `cache`."""
    if o.spec is None:
        valid = _cond(ConditionType.CONFIG_VALID, False, o.spec_error_reason, o.spec_error or "invalid spec")
        conds = [valid, _cond(ConditionType.READY, False, c.COMPONENTS_NOT_READY, "the spec is not valid")]
        return _finish({"phase": Phase.FAILED.value, "conditions": conds}, o, previous, now)
    spec = o.spec
    pvc = names.pvc_name(cache, spec)
    seed_name, _ = names.seed_secret(cache, spec)
    agents, desired, ready = _agents(o)
    conds = [
        _cond(ConditionType.CONFIG_VALID, True, c.CONFIG_ACCEPTED, "spec accepted"),
        _storage(o, spec, pvc),
        agents,
        _cond(ConditionType.SEED_CONSISTENT, False, *o.seed_problem)
        if o.seed_problem
        else _seed(o, spec, cache, now),
    ]
    _hold_progress(conds, previous, now)
    failing = [x["type"] for x in conds if x["status"] != "True"]
    if o.apply_error:
        ready_cond = _cond(ConditionType.READY, False, c.RECONCILE_ERROR, o.apply_error)
    elif failing:
        settled = None if all(x["status"] == "Unknown" for x in conds if x["type"] in failing) else False
        ready_cond = _cond(
            ConditionType.READY, settled, c.COMPONENTS_NOT_READY, "not ready: " + ", ".join(failing)
        )
    else:
        ready_cond = _cond(ConditionType.READY, True, c.RECONCILED, "the cache is ready")
    conds.insert(0, ready_cond)
    status: Obj = {
        "phase": _phase(conds, o).value,
        "conditions": conds,
        "pvcName": pvc,
        "seedSecretName": seed_name,
        "agents": {"desired": desired, "ready": ready},
        "injectedPods": _injected(o, cache),
        "configHash": o.config_hash,
        **o.recorded,
    }
    return _finish(status, o, previous, now)


def _hold_progress(conds: list[Obj], previous: Sequence[Obj], now: str) -> None:
    """A claim being bound or agents rolling out is progress, not a fault: Unknown (no Warning) for
    PROGRESS_GRACE_S after it started, False only if it lasts longer."""
    before = {x.get("type"): x for x in previous}
    current = _parse_time(now)
    for cond in conds:
        if cond["status"] != "False" or cond["reason"] not in PROGRESS_REASONS:
            continue
        old = before.get(cond["type"]) or {}
        if old.get("reason") == cond["reason"] and old.get("status") == "False":
            continue
        held = old.get("reason") == cond["reason"] and old.get("status") == "Unknown"
        since = _parse_time(str(old.get("lastTransitionTime", ""))) if held else current
        if current is not None and since is not None and (current - since).total_seconds() < PROGRESS_GRACE_S:
            cond["status"] = "Unknown"


def _phase(conds: list[Obj], o: Observed) -> Phase:
    by_type = {x["type"]: x for x in conds}
    if by_type["Ready"]["status"] == "True":
        return Phase.READY
    if by_type["SeedConsistent"]["reason"] in (c.SEED_MISMATCH, c.PROFILE_MISMATCH) or o.apply_error:
        return Phase.DEGRADED
    return Phase.PROGRESSING if o.daemon_set is not None or o.pvc is not None else Phase.PENDING


def _finish(status: Obj, o: Observed, previous: Sequence[Obj], now: str) -> Obj:
    """Stamp observedGeneration and keep lastTransitionTime of conditions whose status did not change."""
    before = {x.get("type"): x for x in previous}
    for cond in status["conditions"]:
        old = before.get(cond["type"])
        same = old is not None and old.get("status") == cond["status"] and old.get("lastTransitionTime")
        cond["lastTransitionTime"] = old["lastTransitionTime"] if same and old else now
        cond["observedGeneration"] = o.generation
    status["observedGeneration"] = o.generation
    return {k: v for k, v in status.items() if v is not None}


def transition_events(previous: Sequence[Obj], current: Sequence[Obj]) -> list[tuple[str, str, str]]:
    """Events for conditions whose status changed: Warning when one turns False, Normal for Ready=True."""
    before = {x.get("type"): x.get("status") for x in previous}
    events = []
    for cond in current:
        if before.get(cond["type"]) == cond["status"]:
            continue
        if cond["status"] == "False":
            events.append(("Warning", cond["reason"], f"{cond['type']}: {cond['message']}"))
        elif cond["type"] == ConditionType.READY and cond["status"] == "True":
            events.append(("Normal", cond["reason"], cond["message"]))
    return events
