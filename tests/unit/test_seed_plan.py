"""The seed plan (pure): restored with its value, never made up silently, changes reported."""

from __future__ import annotations

import pytest

from tieredkv_operator.seed import SeedState, fingerprint, plan_generated, plan_user_seed

pytestmark = pytest.mark.unit
UID = "uid-1"


def state(**kw: object) -> SeedState:
    args: dict[str, object] = {
        "secret": "tieredkv-c-seed",
        "backup": "tieredkv-c-seed-backup",
        "secret_exists": True,
        "value": "1234",
        "backup_value": "1234",
        "recorded_fingerprint": fingerprint("1234", UID),
        "recorded_source": "Secret tieredkv-c-seed/seed",
        "request": None,
        "salt": UID,
        **kw,
    }
    return SeedState(**args)  # type: ignore[arg-type]


def never() -> str:
    raise AssertionError("no new seed may be generated here")


def test_the_fingerprint_is_salted_stable_and_does_not_contain_the_seed() -> None:
    assert fingerprint("1234", UID) == fingerprint("1234", UID) != fingerprint("1234", "uid-2")
    assert len(fingerprint("1234", UID)) == 16 and "1234" not in fingerprint("1234", UID)


def test_a_consistent_seed_needs_nothing_written() -> None:
    plan = plan_generated(state(), never)
    assert plan.problem is None and plan.create_secret is None and plan.backup is None


def test_a_fresh_cache_gets_a_generated_seed_and_its_backup() -> None:
    plan = plan_generated(
        state(secret_exists=False, value=None, backup_value=None, recorded_fingerprint=None), lambda: "77"
    )
    assert plan.create_secret == plan.backup == "77" and plan.problem is None
    assert plan.recorded["seedFingerprint"] == fingerprint("77", UID)


def test_a_deleted_secret_is_restored_from_the_backup_with_the_same_value_and_reported() -> None:
    plan = plan_generated(state(secret_exists=False, value=None), never)
    assert plan.create_secret == "1234" and plan.problem is not None
    assert plan.problem[0] == "SeedSecretMissing" and "restored" in plan.problem[1]


def test_a_secret_and_backup_both_gone_are_reported_lost_and_nothing_is_invented() -> None:
    plan = plan_generated(state(secret_exists=False, value=None, backup_value=None), never)
    assert plan.create_secret is None and plan.backup is None
    assert plan.problem is not None and "lost" in plan.problem[1]


def test_a_hand_edited_seed_is_reported_changed_and_left_alone() -> None:
    plan = plan_generated(state(value="999"), never)
    assert plan.problem is not None and plan.problem[0] == "SeedChanged"
    assert plan.create_secret is None and plan.replace_secret is None and plan.backup is None


def test_a_new_request_value_regenerates_the_seed_once_and_records_the_request() -> None:
    plan = plan_generated(state(request="r1"), lambda: "42")
    assert plan.replace_secret == plan.backup == "42"
    assert plan.recorded["handledRequests"] == {"tieredkv.io/regenerate-seed": "r1"}
    assert [e[1] for e in plan.events] == ["SeedRegenerated"]


def test_a_retained_seed_without_a_fingerprint_is_adopted_and_backed_up() -> None:
    plan = plan_generated(state(backup_value=None, recorded_fingerprint=None), never)
    assert plan.backup == "1234" and plan.problem is None


def test_a_user_seed_that_changed_is_recorded_in_a_warning_not_refused() -> None:
    recorded = {"seedFingerprint": fingerprint("1", UID), "seedSource": "spec.hashSeed.value"}
    plan = plan_user_seed("2", "spec.hashSeed.value", recorded, UID)
    assert plan.problem is None and plan.recorded["seedFingerprint"] == fingerprint("2", UID)
    assert [e[:2] for e in plan.events] == [("Warning", "SeedChanged")]
    assert plan_user_seed("1", "spec.hashSeed.value", recorded, UID).events == []
