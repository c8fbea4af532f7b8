"""The pure status function: conditions from observed children, transition times, phase and Events."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tieredkv_operator.spec import TieredKVCacheSpec
from tieredkv_operator.status import Observed, compute_status, transition_events

pytestmark = pytest.mark.unit

SPEC = TieredKVCacheSpec.model_validate(
    {
        "storage": {"size": "10Gi"},
        "vllm": {"version": "0.33", "cpuBytes": "1Gi", "selector": {"matchLabels": {"app": "v"}}},
    }
)
SEED = {"data": {"seed": base64.b64encode(b"1234").decode()}}
BOUND = {
    "spec": {"accessModes": ["ReadWriteMany"]},
    "status": {"phase": "Bound", "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany"]},
}


def ds(desired: int, ready: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": 2},
        "status": {
            "observedGeneration": 2,
            "desiredNumberScheduled": desired,
            "numberReady": ready,
            "updatedNumberScheduled": desired,
        },
    }


def conds(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def healthy(**kw: Any) -> Observed:
    args: dict[str, Any] = {
        "generation": 4,
        "spec": SPEC,
        "pvc": BOUND,
        "seed_secret": SEED,
        "daemon_set": ds(2, 2),
        "config_hash": "h",
        **kw,
    }
    return Observed(**args)


def test_a_cache_with_everything_in_place_is_ready() -> None:
    status = compute_status("c", healthy(), [], "t0")
    assert status["phase"] == "Ready" and conds(status)["Ready"] == ("True", "Reconciled")
    assert status["agents"] == {"desired": 2, "ready": 2} and status["observedGeneration"] == 4
    assert all(c["observedGeneration"] == 4 for c in status["conditions"])


@pytest.mark.parametrize(
    ("observed", "kind", "reason"),
    [
        (healthy(pvc=None), "StorageReady", "ClaimPending"),
        (
            healthy(pvc={"status": {"phase": "Pending"}, "spec": {"storageClassName": "slow"}}),
            "StorageReady",
            "ClaimPending",
        ),
        (healthy(pvc={"status": {"phase": "Lost"}, "spec": {}}), "StorageReady", "ClaimLost"),
        (
            healthy(pvc={"status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"]}, "spec": {}}),
            "StorageReady",
            "AccessModeMismatch",
        ),
        (healthy(daemon_set=ds(0, 0)), "AgentsReady", "NoMatchingNodes"),
        (healthy(daemon_set=ds(2, 1)), "AgentsReady", "AgentsProgressing"),
        (healthy(seed_secret=None), "SeedConsistent", "SeedSecretMissing"),
        (healthy(seed_secret={"data": {}}), "SeedConsistent", "SeedKeyMissing"),
        (healthy(seed_secret={"stringData": {"seed": "random"}}), "SeedConsistent", "SeedInvalid"),
    ],
)
def test_each_missing_or_wrong_child_turns_its_condition_false_with_a_reason(
    observed: Observed, kind: str, reason: str
) -> None:
    status = compute_status("c", observed, [], "t0")
    assert conds(status)[kind] == ("False", reason)
    assert conds(status)["Ready"] == ("False", "ComponentsNotReady")
    assert kind in next(c["message"] for c in status["conditions"] if c["type"] == "Ready")


def test_a_pod_with_a_conflicting_seed_degrades_the_cache_and_is_named() -> None:
    pod = {"metadata": {"name": "rogue", "annotations": {"tieredkv.io/skip-reason": "seed-conflict"}}}
    status = compute_status("c", healthy(pods=[pod]), [], "t0")
    assert conds(status)["SeedConsistent"] == ("False", "SeedMismatch") and status["phase"] == "Degraded"
    assert "rogue" in next(c["message"] for c in status["conditions"] if c["type"] == "SeedConsistent")


def test_only_live_injected_pods_are_counted() -> None:
    live = {"metadata": {"name": "a", "annotations": {"tieredkv.io/injected": "c"}}}
    going = {
        "metadata": {"name": "b", "annotations": {"tieredkv.io/injected": "c"}, "deletionTimestamp": "x"}
    }
    other = {"metadata": {"name": "d", "annotations": {"tieredkv.io/injected": "other"}}}
    assert compute_status("c", healthy(pods=[live, going, other]), [], "t0")["injectedPods"] == 1


def test_an_invalid_spec_fails_with_the_message_and_no_child_fields() -> None:
    observed = Observed(generation=1, spec=None, spec_error="spec.capacity: low above high")
    status = compute_status("c", observed, [], "t0")
    assert status["phase"] == "Failed" and conds(status)["ConfigValid"] == ("False", "InvalidSpec")
    assert "pvcName" not in status


def test_a_transition_time_is_kept_while_the_status_holds_and_moves_when_it_flips() -> None:
    first = compute_status("c", healthy(), [], "t0")
    again = compute_status("c", healthy(), first["conditions"], "t1")
    assert {c["lastTransitionTime"] for c in again["conditions"]} == {"t0"}
    flipped = compute_status("c", healthy(daemon_set=ds(2, 1)), again["conditions"], "t2")
    times = {c["type"]: c["lastTransitionTime"] for c in flipped["conditions"]}
    assert times["AgentsReady"] == "t2" and times["Ready"] == "t2" and times["StorageReady"] == "t0"


def test_events_are_emitted_for_flips_only() -> None:
    ready = compute_status("c", healthy(), [], "t0")["conditions"]
    broken = compute_status("c", healthy(seed_secret=None), ready, "t1")["conditions"]
    assert transition_events(ready, ready) == []
    events = transition_events(ready, broken)
    assert ("Warning", "SeedSecretMissing") in [(e[0], e[1]) for e in events]
    assert ("Normal", "Reconciled") in [(e[0], e[1]) for e in transition_events(broken, ready)]


def mismatch_report(last_seen: str) -> dict[str, Any]:
    return {
        "instance": "vllm-a/12-ab12cd",
        "offeredFingerprint": "1111111111111111",
        "expectedFingerprint": "2222222222222222",
        "action": "reject",
        "count": 3,
        "lastSeen": last_seen,
    }


def test_a_recent_agent_report_of_a_mismatched_hello_degrades_the_cache_naming_both_fingerprints() -> None:
    reports = {"node-1": mismatch_report("2026-11-22T10:00:00Z")}
    status = compute_status("c", healthy(profile_mismatches=reports), [], "2026-11-22T10:05:00Z")
    assert conds(status)["SeedConsistent"] == ("False", "ProfileMismatch") and status["phase"] == "Degraded"
    message = next(c["message"] for c in status["conditions"] if c["type"] == "SeedConsistent")
    assert "node node-1" in message and "1111111111111111" in message and "2222222222222222" in message


def test_an_agent_report_older_than_fifteen_minutes_no_longer_counts() -> None:
    reports = {"node-1": mismatch_report("2026-11-22T10:00:00Z"), "node-2": {"lastSeen": "garbage"}}
    status = compute_status("c", healthy(profile_mismatches=reports), [], "2026-11-22T10:15:01Z")
    assert conds(status)["SeedConsistent"] == ("True", "SeedSecretReady") and status["phase"] == "Ready"


def test_agents_are_not_judged_before_the_daemon_set_controller_observed_the_daemon_set() -> None:
    unseen = {"metadata": {"generation": 3}, "status": {"observedGeneration": 2, "desiredNumberScheduled": 0}}
    status = compute_status("c", healthy(daemon_set=unseen), [], "2026-11-22T10:00:00Z")
    assert conds(status)["AgentsReady"][0] == "Unknown" and conds(status)["Ready"][0] == "Unknown"
    assert transition_events([], status["conditions"]) == []


def test_a_pending_claim_is_unknown_for_the_grace_period_and_then_false_with_a_warning() -> None:
    pending = healthy(pvc={"status": {"phase": "Pending"}, "spec": {}})
    first = compute_status("c", pending, [], "2026-11-22T10:00:00Z")
    assert conds(first)["StorageReady"] == ("Unknown", "ClaimPending")
    held = compute_status("c", pending, first["conditions"], "2026-11-22T10:00:10Z")
    assert conds(held)["StorageReady"] == ("Unknown", "ClaimPending")
    late = compute_status("c", pending, held["conditions"], "2026-11-22T10:00:30Z")
    assert conds(late)["StorageReady"] == ("False", "ClaimPending")
    assert ("Warning", "ClaimPending") in [
        e[:2] for e in transition_events(held["conditions"], late["conditions"])
    ]


@pytest.mark.parametrize(
    ("observed", "reason"),
    [
        (healthy(pvc={**BOUND, "metadata": {"deletionTimestamp": "x"}}), "ClaimTerminating"),
        (healthy(pvc=None, claim_deleted=True), "ClaimDeleted"),
    ],
)
def test_a_claim_being_deleted_or_gone_is_reported_as_such(observed: Observed, reason: str) -> None:
    status = compute_status("c", observed, [], "t0")
    assert conds(status)["StorageReady"] == ("False", reason) and conds(status)["Ready"][0] == "False"


def test_a_seed_problem_from_the_seed_step_is_the_seed_condition() -> None:
    status = compute_status("c", healthy(seed_problem=("SeedChanged", "edited by hand")), [], "t0")
    assert conds(status)["SeedConsistent"] == ("False", "SeedChanged")


def test_recorded_fields_are_written_back_into_the_status() -> None:
    recorded = {"seedFingerprint": "ab", "claimUid": "u", "handledRequests": {"a": "1"}}
    status = compute_status("c", healthy(recorded=recorded), [], "t0")
    assert {k: status[k] for k in recorded} == recorded
