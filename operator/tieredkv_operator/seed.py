"""What to do about a cache's PYTHONHASHSEED, decided from what exists (pure: no API calls here).

A generated seed lives in the Secret `tieredkv-<cache>-seed` and, owned by the cache, in the backup
`tieredkv-<cache>-seed-backup`. The seed is never replaced silently:

* the Secret deleted: restored from the backup with the same value; SeedConsistent=False (SeedSecretMissing)
  for that pass, so a Warning Event says what happened;
* Secret and backup both gone after a seed was in use: nothing is invented; SeedSecretMissing until the
  user restores the Secret or asks for a new seed;
* the value edited by hand (its fingerprint differs from status.seedFingerprint): SeedChanged, left alone;
* a new value of the annotation tieredkv.io/regenerate-seed: a new random seed, recorded in status and in a
  Warning Event (pods started before and after it do not share blocks).

A seed given as `hashSeed.value` or in the user's own Secret (`secretRef`) is the user's: a change is
recorded (a Warning Event and the new fingerprint), not refused.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from tieredkv_operator import conditions as c
from tieredkv_operator import names
from tieredkv_operator.spec import MAX_HASH_SEED

Obj = dict[str, Any]
Event = tuple[str, str, str]
FINGERPRINT_ITERATIONS: Final = 20000
"""PBKDF2 rounds: a fingerprint in status must not make the 2^32 seeds cheap to try."""
SEED_REGENERATED: Final = "SeedRegenerated"
SEED_RESTORED: Final = "SeedRestored"


@functools.lru_cache(maxsize=256)
def fingerprint(seed: str, salt: str) -> str:
    """16 hex digits of PBKDF2-SHA256 over the seed, salted with the cache's UID (not the seed itself)."""
    digest = hashlib.pbkdf2_hmac(
        "sha256", seed.encode(), f"tieredkv-seed:{salt}".encode(), FINGERPRINT_ITERATIONS
    )
    return digest.hex()[:16]


def secret_value(secret: Obj | None, key: str) -> str | None:
    """The value under `key` in a Secret as read from the API (data) or as built (stringData)."""
    if secret is None:
        return None
    if key in (secret.get("stringData") or {}):
        return str(secret["stringData"][key])
    raw = (secret.get("data") or {}).get(key)
    return None if raw is None else base64.b64decode(raw).decode(errors="replace")


def valid(seed: str | None) -> bool:
    return seed is not None and seed.isdigit() and int(seed) <= MAX_HASH_SEED


@dataclass
class SeedPlan:
    """What the reconcile writes, and what it reports, about the seed."""

    create_secret: str | None = None
    """Create the seed Secret with this value (it does not exist)."""
    replace_secret: str | None = None
    """Overwrite the existing seed Secret's value (only on an explicit request)."""
    backup: str | None = None
    """Apply the backup with this value."""
    problem: tuple[str, str] | None = None
    events: list[Event] = field(default_factory=list)
    recorded: Obj = field(default_factory=dict)
    secret: Obj | None = None
    """The seed Secret as the plan saw it, or as written: the status judges this one, so one pass never
    mixes two reads (a Secret deleted between them would be reported without its restoration)."""
    secret_read: bool = False


@dataclass(frozen=True)
class SeedState:
    """What the reconcile read about a generated seed."""

    secret: str
    backup: str
    secret_exists: bool
    value: str | None
    backup_value: str | None
    recorded_fingerprint: str | None
    recorded_source: str | None
    request: str | None
    """A value of tieredkv.io/regenerate-seed not acted on yet (None: no request)."""
    salt: str


def plan_generated(state: SeedState, fresh: Callable[[], str]) -> SeedPlan:
    """The plan for a seed the operator generates (no secretRef, no literal value)."""
    source = f"Secret {state.secret}/{names.SEED_KEY_DEFAULT}"
    if state.request is not None:
        return _regenerate(state, fresh(), source)
    if not state.secret_exists:
        return _missing(state, fresh, source)
    if state.value is None and valid(state.backup_value):
        message = (
            f"Secret {state.secret} lost its key {names.SEED_KEY_DEFAULT!r}: restored from Secret "
            f"{state.backup} with the same seed"
        )
        return SeedPlan(replace_secret=state.backup_value, problem=(c.SEED_KEY_MISSING, message))
    if not valid(state.value):
        return SeedPlan()  # the status names the problem (SeedKeyMissing, SeedInvalid)
    assert state.value is not None
    now = fingerprint(state.value, state.salt)
    if state.recorded_fingerprint not in (None, now) and state.recorded_source == source:
        message = (
            f"the seed in Secret {state.secret} was changed by hand (fingerprint "
            f"{state.recorded_fingerprint} "
            f"-> {now}): pods started before and after the change do not share blocks. Restore it from "
            f"Secret {state.backup}, or set annotation "
            f"{names.ANNOTATION_REGENERATE_SEED} to a new value for a new seed"
        )
        return SeedPlan(problem=(c.SEED_CHANGED, message))
    backup = state.value if state.backup_value != state.value else None
    return SeedPlan(backup=backup, recorded={"seedFingerprint": now, "seedSource": source})


def _regenerate(state: SeedState, seed: str, source: str) -> SeedPlan:
    now = fingerprint(seed, state.salt)
    event = (
        "Warning",
        SEED_REGENERATED,
        f"a new seed (fingerprint {now}, was {state.recorded_fingerprint or 'none'}) was generated as "
        f"asked by annotation {names.ANNOTATION_REGENERATE_SEED}={state.request}: restart every vLLM pod "
        "of this cache; "
        "blocks stored with the old seed are orphaned",
    )
    return SeedPlan(
        create_secret=None if state.secret_exists else seed,
        replace_secret=seed if state.secret_exists else None,
        backup=seed,
        events=[event],
        recorded={
            "seedFingerprint": now,
            "seedSource": source,
            "handledRequests": {names.ANNOTATION_REGENERATE_SEED: state.request},
        },
    )


def _missing(state: SeedState, fresh: Callable[[], str], source: str) -> SeedPlan:
    if valid(state.backup_value):
        assert state.backup_value is not None
        now = fingerprint(state.backup_value, state.salt)
        message = (
            f"Secret {state.secret} was deleted: restored from Secret "
            f"{state.backup} with the same seed (fingerprint {now})"
        )
        return SeedPlan(
            create_secret=state.backup_value,
            problem=(c.SEED_SECRET_MISSING, message),
            recorded={"seedFingerprint": now, "seedSource": source},
        )
    if state.recorded_fingerprint is not None:
        message = (
            f"Secret {state.secret} and its backup were deleted: the seed (fingerprint "
            f"{state.recorded_fingerprint}) is lost and no new one is made up silently. Recreate the Secret "
            f"with the old seed, or set annotation {names.ANNOTATION_REGENERATE_SEED} to a new value for "
            "a new "
            "seed (pods started before and after do not share blocks)"
        )
        return SeedPlan(problem=(c.SEED_SECRET_MISSING, message))
    seed = fresh()
    return SeedPlan(
        create_secret=seed,
        backup=seed,
        recorded={"seedFingerprint": fingerprint(seed, state.salt), "seedSource": source},
    )


def plan_user_seed(value: str | None, source: str, recorded: Obj, salt: str) -> SeedPlan:
    """A literal value or the user's own Secret: a changed seed is recorded (an Event), never refused."""
    if not valid(value):
        return SeedPlan()
    assert value is not None
    now = fingerprint(value, salt)
    plan = SeedPlan(recorded={"seedFingerprint": now, "seedSource": source})
    before = recorded.get("seedFingerprint")
    if before is not None and before != now:
        where = "" if recorded.get("seedSource") == source else f" (from {recorded.get('seedSource')})"
        plan.events.append(
            (
                "Warning",
                c.SEED_CHANGED,
                f"the seed of this cache changed{where}: {source}, fingerprint {before} -> {now}; "
                "blocks stored "
                "with the old seed are orphaned and pods started before the change do not share blocks",
            )
        )
    return plan
