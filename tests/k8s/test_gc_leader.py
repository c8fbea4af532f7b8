"""Two agents' capacity managers share one volume and elect their GC leader with a real Lease."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tieredkv_agent.capacity.lease import LeaseElector, lease_name
from tieredkv_agent.capacity.manager import CapacityManager
from tieredkv_agent.store.naming import block_path, make_offload_key

pytestmark = pytest.mark.k8s

LEASE_S = 4
RENEW_S = 1.0
RETRY_S = 0.5
API_SLACK_S = 0.5
"""Room for the API round trips of a takeover on a loaded test machine."""


class Agent:
    """One simulated node agent: a Lease elector and the capacity manager it drives."""

    def __init__(self, api: client.ApiClient, ns: str, identity: str, volume: Path) -> None:
        self.identity = identity
        self.elector = LeaseElector(
            client.CoordinationV1Api(api),
            namespace=ns,
            name=lease_name("c"),
            identity=identity,
            lease_duration_s=LEASE_S,
            renew_period_s=RENEW_S,
            retry_period_s=RETRY_S,
            renew_deadline_s=LEASE_S * 0.7,
        )
        self.manager = CapacityManager(
            volume,
            max_bytes=10_000,
            grace_s=0,
            scan_interval_s=0.5,
            watch_filesystem=False,
            elector=self.elector,
        )

    @property
    def is_leader(self) -> bool:
        return self.manager.is_leader


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """A shared volume holding 40 old 1 KB blocks: 40 KB against a 10 KB limit."""
    now = time.time()
    for n in range(40):
        path = Path(
            block_path(tmp_path / "m_0123456789ab_r0", make_offload_key(n.to_bytes(2, "big") * 16, 0))
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 1000)
        os.utime(path, (now - 3600 + n, now - 3600 + n))
    return tmp_path


@pytest.fixture
def agents(api: client.ApiClient, ns: str, volume: Path) -> Iterator[tuple[Agent, Agent]]:
    pair = (Agent(api, ns, "tkv-node-1", volume), Agent(api, ns, "tkv-node-2", volume))
    for agent in pair:
        agent.manager.start()
    yield pair
    for agent in pair:
        agent.manager.stop()


def wait_until(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until `condition()` held; fails the test after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - started


def the_leader(agents: tuple[Agent, Agent]) -> tuple[Agent, Agent]:
    wait_until(lambda: any(a.is_leader for a in agents), LEASE_S + RETRY_S + API_SLACK_S)
    leader = next(a for a in agents if a.is_leader)
    return leader, next(a for a in agents if a is not leader)


class LeaderCount:
    """Samples both agents every 10 ms in a thread and remembers the most leaders seen at once."""

    def __init__(self, agents: tuple[Agent, Agent]) -> None:
        self.agents = agents
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.most = max(self.most, sum(a.is_leader for a in self.agents))
            if self._stop.wait(0.01):
                return

    def __enter__(self) -> LeaderCount:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.most = max(self.most, sum(a.is_leader for a in self.agents))


def holder(api: client.ApiClient, ns: str) -> str | None:
    lease = client.CoordinationV1Api(api).read_namespaced_lease(lease_name("c"), ns)
    return lease.spec.holder_identity or None


def test_exactly_one_of_two_agents_leads_and_only_the_leader_deletes(
    agents: tuple[Agent, Agent], api: client.ApiClient, ns: str, volume: Path
) -> None:
    leader, follower = the_leader(agents)
    with LeaderCount(agents) as count:
        wait_until(lambda: leader.manager.passes_total >= 3, 5)
    assert count.most == 1
    assert leader.is_leader and not follower.is_leader
    assert holder(api, ns) == leader.identity
    assert follower.manager.passes_total == 0
    assert leader.manager.evicted_files_total > 0
    blocks = sum(1 for p in volume.rglob("*.bin"))
    assert blocks * 1000 <= 0.75 * 10_000


def test_when_the_leader_dies_the_other_takes_over_within_the_lease_duration(
    agents: tuple[Agent, Agent], api: client.ApiClient, ns: str
) -> None:
    leader, follower = the_leader(agents)
    time.sleep(RENEW_S * 1.5)  # a steady state with renewals behind it
    with LeaderCount(agents) as count:
        leader.manager.stop(release=False)  # stops renewing; the Lease still names it
        assert holder(api, ns) == leader.identity
        took = wait_until(lambda: follower.is_leader, LEASE_S + API_SLACK_S)
    assert count.most == 1
    assert took >= LEASE_S - RENEW_S - API_SLACK_S, "took over before the lease could have expired"
    assert holder(api, ns) == follower.identity
    wait_until(lambda: follower.manager.passes_total >= 1, 2)


def test_a_clean_release_hands_leadership_over_at_once(
    agents: tuple[Agent, Agent], api: client.ApiClient, ns: str
) -> None:
    leader, follower = the_leader(agents)
    with LeaderCount(agents) as count:
        leader.manager.stop(release=True)
        assert holder(api, ns) != leader.identity
        took = wait_until(lambda: follower.is_leader, RETRY_S + API_SLACK_S)
    assert count.most == 1
    assert took < LEASE_S / 2
    assert holder(api, ns) == follower.identity
