"""GC leader election with a `coordination.k8s.io/v1` Lease, e.g. `tieredkv-<cache>-gc`.

The holder renews `spec.renewTime` every `renew_period_s`; a candidate takes the Lease over once
`renewTime + leaseDurationSeconds` has passed, waking exactly then rather than a poll later. Every
write is a `replace` carrying the `resourceVersion` that was read, so of two racing candidates the
API server accepts one and answers 409 Conflict to the other. The holder believes it leads only until
`renew_deadline_s` after the start of its last successful renewal, which is shorter than the lease
duration, so it steps down before anybody else may take over. A clean `stop()` clears
`holderIdentity`, and a waiting candidate takes over at its next poll.

Expiry compares the holder's `renewTime` with the local wall clock, so node clocks must agree (NTP);
a node whose clock runs X seconds ahead could take over X seconds early. Two leaders for a moment
cost at most a duplicated scan: eviction re-checks each file before deleting it.

RBAC: `get`, `create` and `update` on `leases` in the agent's namespace.
Threads: `_attempt` runs on the elector thread, `_release` on the thread calling `stop()`.
"""

import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from tieredkv_agent.capacity.leader import PollingElector

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def lease_name(cache: str) -> str:
    """The Lease of one cache's GC leader."""
    return f"tieredkv-{cache}-gc"


def micro_time(epoch_s: float) -> str:
    """A Kubernetes MicroTime: RFC 3339 in UTC with exactly six fractional digits."""
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector(PollingElector):
    """Leader = holder of a Lease; `coordination` is a `kubernetes.client.CoordinationV1Api`."""

    def __init__(
        self,
        coordination: Any,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration_s: int = 15,
        renew_period_s: float = 5.0,
        retry_period_s: float = 2.0,
        renew_deadline_s: float | None = None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(identity, retry_period_s=retry_period_s, mono=mono)
        deadline = renew_deadline_s if renew_deadline_s is not None else lease_duration_s * 2 / 3
        if not 0 < renew_period_s < deadline < lease_duration_s:
            raise ValueError("need 0 < renew_period_s < renew_deadline_s < lease_duration_s")
        self._api = coordination
        self.namespace = namespace
        self.name = name
        self.lease_duration_s = int(lease_duration_s)
        self.renew_period_s = renew_period_s
        self.renew_deadline_s = deadline
        self._wall = wall

    @classmethod
    def in_cluster(
        cls, cache: str, identity: str, *, namespace: str | None = None, **kwargs: Any
    ) -> "LeaseElector":
        """From the pod's service account (agent startup thread); namespace defaults to the pod's."""
        from kubernetes import client, config

        config.load_incluster_config()
        namespace = namespace or SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        api = client.CoordinationV1Api(client.ApiClient())
        return cls(api, namespace=namespace, name=lease_name(cache), identity=identity, **kwargs)

    def _attempt(self) -> float:
        started = self._mono()
        try:
            lease = self._api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.renew_period_s
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            return self._write(None, started)
        holder = lease.spec.holder_identity or ""
        if holder and holder != self.identity:
            wait = self._expiry(lease.spec) - self._wall()
            if wait > 0:
                self._set_leader(False)
                return min(self.retry_period_s, wait + 0.01)
            log.info("%s: lease %s of %s expired; taking over", self.identity, self.name, holder)
        return self._write(lease, started)

    def _expiry(self, spec: Any) -> float:
        if spec.renew_time is None:
            return -math.inf
        return float(spec.renew_time.timestamp()) + float(spec.lease_duration_seconds or 0)

    def _write(self, lease: Any, started: float) -> float:
        """Create, renew or take over the Lease (elector thread); 409 means someone else won."""
        now = micro_time(self._wall())
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_duration_s,
            "renewTime": now,
            "acquireTime": now,
            "leaseTransitions": 0,
        }
        try:
            if lease is None:
                self._api.create_namespaced_lease(
                    self.namespace, self._body(spec, None), _request_timeout=self.renew_period_s
                )
            else:
                self._carry_over(spec, lease.spec)
                body = self._body(spec, lease.metadata.resource_version)
                self._api.replace_namespaced_lease(
                    self.name, self.namespace, body, _request_timeout=self.renew_period_s
                )
        except ApiException as exc:
            if exc.status != 409:
                raise
            self._set_leader(False)
            return 0.05  # the Lease moved under us: read it again right away
        self._set_leader(True, until=started + self.renew_deadline_s)
        return self.renew_period_s

    def _carry_over(self, spec: dict[str, Any], current: Any) -> None:
        """Keep acquireTime on a renewal; count a transition on a takeover."""
        transitions = current.lease_transitions or 0
        if current.holder_identity == self.identity and current.acquire_time is not None:
            spec["acquireTime"] = micro_time(current.acquire_time.timestamp())
            spec["leaseTransitions"] = transitions
        else:
            spec["leaseTransitions"] = transitions + 1

    def _body(self, spec: dict[str, Any], resource_version: str | None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def _release(self) -> None:
        """Clear holderIdentity if we still hold the Lease (thread calling stop())."""
        lease = self._api.read_namespaced_lease(
            self.name, self.namespace, _request_timeout=self.renew_period_s
        )
        if lease.spec.holder_identity != self.identity:
            return
        spec = {
            "leaseDurationSeconds": 1,
            "renewTime": micro_time(self._wall()),
            "leaseTransitions": lease.spec.lease_transitions or 0,
        }
        body = self._body(spec, lease.metadata.resource_version)
        self._api.replace_namespaced_lease(
            self.name, self.namespace, body, _request_timeout=self.renew_period_s
        )
        log.info("%s: released lease %s", self.identity, self.name)
