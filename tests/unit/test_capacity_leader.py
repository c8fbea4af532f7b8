"""Leader election: the local flock elector on real files, the Lease elector against an in-memory API."""

import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tieredkv_agent.capacity.layout import LOCK_FILE_NAME
from tieredkv_agent.capacity.leader import FileLockElector
from tieredkv_agent.capacity.lease import LeaseElector, micro_time
from tieredkv_agent.capacity.manager import CapacityManager

pytestmark = pytest.mark.unit


def wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


# -- the local lock --------------------------------------------------------------------------------


def test_two_lock_electors_never_lead_together_and_a_stop_hands_over(tmp_path: Path) -> None:
    events: list[tuple[str, bool]] = []
    a, b = (FileLockElector(tmp_path, name, retry_period_s=0.02) for name in ("a", "b"))
    for elector in (a, b):
        elector.start(lambda leader, who=elector.identity: events.append((who, leader)))
    wait_until(lambda: a.is_leader or b.is_leader)
    for _ in range(20):
        assert a.is_leader != b.is_leader
        time.sleep(0.005)
    leader, other = (a, b) if a.is_leader else (b, a)
    assert (tmp_path / LOCK_FILE_NAME).read_text() == f"{leader.identity}\n"
    leader.stop()
    wait_until(lambda: other.is_leader, timeout=1.0)
    other.stop()
    assert events == [
        (leader.identity, True),
        (leader.identity, False),
        (other.identity, True),
        (other.identity, False),
    ]


def test_a_holder_whose_lock_file_was_deleted_steps_down(tmp_path: Path) -> None:
    a, b = FileLockElector(tmp_path, "a"), FileLockElector(tmp_path, "b")
    a._attempt()
    assert a.is_leader
    (tmp_path / LOCK_FILE_NAME).unlink()
    b._attempt()
    a._attempt()
    assert b.is_leader and not a.is_leader
    a.stop()
    b.stop()


def test_two_managers_on_one_volume_run_gc_one_at_a_time(tmp_path: Path) -> None:
    managers = [
        CapacityManager(
            tmp_path, scan_interval_s=0.02, elector=FileLockElector(tmp_path, name, retry_period_s=0.02)
        )
        for name in ("a", "b")
    ]
    for manager in managers:
        manager.start()
    wait_until(lambda: sum(m.passes_total for m in managers) >= 3)
    leader, other = sorted(managers, key=lambda m: -m.passes_total)
    assert other.passes_total == 0
    leader.stop()
    wait_until(lambda: other.passes_total >= 2)
    other.stop()


# -- the Lease -------------------------------------------------------------------------------------


class FakeLeases:
    """The Lease calls of CoordinationV1Api for one namespace: resourceVersion checks, 404s and 409s."""

    def __init__(self) -> None:
        self.stored: dict[str, tuple[int, dict[str, Any]]] = {}
        self.version = 0
        self.failing = False
        self.before_replace: Any = None

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> SimpleNamespace:
        if self.failing:
            raise ApiException(status=503)
        if name not in self.stored:
            raise ApiException(status=404)
        version, spec = self.stored[name]
        fields = {k: spec.get(k) for k in ("holderIdentity", "leaseDurationSeconds", "leaseTransitions")}
        return SimpleNamespace(
            metadata=SimpleNamespace(resource_version=str(version)),
            spec=SimpleNamespace(
                holder_identity=fields["holderIdentity"],
                lease_duration_seconds=fields["leaseDurationSeconds"],
                lease_transitions=fields["leaseTransitions"],
                renew_time=parse_micro(spec.get("renewTime")),
                acquire_time=parse_micro(spec.get("acquireTime")),
            ),
        )

    def create_namespaced_lease(self, namespace: str, body: dict[str, Any], **_: Any) -> None:
        name = body["metadata"]["name"]
        if name in self.stored:
            raise ApiException(status=409)
        self._store(name, body)

    def replace_namespaced_lease(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> None:
        if self.before_replace is not None:
            hook, self.before_replace = self.before_replace, None
            hook()
        if self.failing:
            raise ApiException(status=503)
        if body["metadata"]["resourceVersion"] != str(self.stored[name][0]):
            raise ApiException(status=409)
        self._store(name, body)

    def _store(self, name: str, body: dict[str, Any]) -> None:
        self.version += 1
        self.stored[name] = (self.version, dict(body["spec"]))

    def holder(self) -> str | None:
        return self.stored["lease"][1].get("holderIdentity")


def parse_micro(text: str | None) -> datetime | None:
    return None if text is None else datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


class Clocks:
    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.mono = 100.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def elector(api: FakeLeases, clocks: Clocks, identity: str) -> LeaseElector:
    return LeaseElector(
        api,
        namespace="ns",
        name="lease",
        identity=identity,
        lease_duration_s=15,
        renew_period_s=5,
        retry_period_s=2,
        wall=lambda: clocks.wall,
        mono=lambda: clocks.mono,
    )


def test_the_first_candidate_creates_the_lease_and_the_second_waits_for_it_to_expire() -> None:
    api, clocks = FakeLeases(), Clocks()
    a, b = elector(api, clocks, "a"), elector(api, clocks, "b")
    assert a._attempt() == 5 and a.is_leader
    assert b._attempt() == 2 and not b.is_leader
    clocks.advance(14)
    assert b._attempt() == pytest.approx(1.01)
    assert api.holder() == "a"


def test_of_two_candidates_racing_for_the_lease_the_one_with_a_stale_version_gets_a_conflict() -> None:
    api, clocks = FakeLeases(), Clocks()
    a, b, c = elector(api, clocks, "a"), elector(api, clocks, "b"), elector(api, clocks, "c")
    a._attempt()
    clocks.advance(20)  # a died: its lease expired
    api.before_replace = c._attempt  # c reads and wins while b is between its read and its write
    assert b._attempt() == 0.05
    assert c.is_leader and not b.is_leader and api.holder() == "c"
    assert api.stored["lease"][1]["leaseTransitions"] == 1


def test_a_leader_that_cannot_renew_steps_down_before_anyone_may_take_over() -> None:
    api, clocks = FakeLeases(), Clocks()
    a, b = elector(api, clocks, "a"), elector(api, clocks, "b")
    a._attempt()
    api.failing = True
    clocks.advance(a.renew_deadline_s + 0.01)
    assert not a.is_leader
    api.failing = False
    b._attempt()
    assert not b.is_leader, "the lease itself has not expired yet"
    clocks.advance(15 - a.renew_deadline_s)
    b._attempt()
    assert b.is_leader


def test_a_renewal_keeps_the_acquire_time_and_a_released_lease_is_taken_at_the_next_attempt() -> None:
    api, clocks = FakeLeases(), Clocks()
    a, b = elector(api, clocks, "a"), elector(api, clocks, "b")
    a._attempt()
    acquired = api.stored["lease"][1]["acquireTime"]
    clocks.advance(5)
    a._attempt()
    assert api.stored["lease"][1]["acquireTime"] == acquired
    assert api.stored["lease"][1]["renewTime"] == micro_time(clocks.wall)
    a.stop(release=True)
    assert api.holder() is None and not a.is_leader
    b._attempt()
    assert b.is_leader


def test_lease_timings_must_leave_room_to_renew_before_the_deadline() -> None:
    with pytest.raises(ValueError, match="renew"):
        LeaseElector(
            FakeLeases(), namespace="n", name="l", identity="a", lease_duration_s=6, renew_period_s=5
        )


def test_micro_time_always_has_six_fractional_digits() -> None:
    assert micro_time(1_800_000_000.0) == "2027-01-15T08:00:00.000000Z"
    assert micro_time(1_800_000_000.25) == "2027-01-15T08:00:00.250000Z"
