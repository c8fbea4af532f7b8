"""The drift loop: every drift interval each cache is reconciled again (repairs edited children, refreshes
the status), on a thread of its own.

Not a `@kopf.timer`: kopf 1.45 puts a finalizer on every object that has a timer, so a cache could not be
deleted (nor its namespace) while the operator is not running — and the operator keeps no state that
needs a finalizer: children go by ownerReferences. With peering, the loop acts only while no live peer
outranks this operator, the rule kopf applies to its own handlers (a paused replica stays quiet).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from tieredkv_operator.spec import GROUP, PLURAL, VERSION

log = logging.getLogger("tieredkv_operator.drift")

KOPF_PEERING_API = "apis/kopf.dev/v1"
DEFAULT_PEER_LIFETIME_S = 60


class Reader(Protocol):
    def read(self, path: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class Peering:
    """This operator's place among its peers: kopf's peering object name and this replica's priority."""

    name: str
    priority: int


def outranked(peers: Mapping[str, Any], priority: int, now: datetime) -> bool:
    """Whether a live peer in a kopf peering object's status has a higher priority than `priority` (pure).

    A peer is live until `lastseen + lifetime`; kopf pauses an operator while such a peer exists.
    """
    for info in peers.values():
        if not isinstance(info, Mapping):
            continue
        try:
            seen = datetime.fromisoformat(str(info["lastseen"]))
            lifetime = timedelta(seconds=int(info.get("lifetime", DEFAULT_PEER_LIFETIME_S)))
            higher = int(info.get("priority", 0)) > priority
        except (KeyError, TypeError, ValueError):
            continue
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=UTC)
        if higher and seen + lifetime > now:
            return True
    return False


def cache_paths(namespaces: Sequence[str]) -> list[str]:
    """API paths listing the caches this operator serves: per watched namespace, or cluster-wide."""
    base = f"apis/{GROUP}/{VERSION}"
    if not namespaces:
        return [f"/{base}/{PLURAL}"]
    return [f"/{base}/namespaces/{ns}/{PLURAL}" for ns in namespaces]


def peering_paths(name: str, namespaces: Sequence[str]) -> list[str]:
    """Where kopf keeps the peering object: cluster-wide, or one per watched namespace."""
    if not namespaces:
        return [f"/{KOPF_PEERING_API}/clusterkopfpeerings/{name}"]
    return [f"/{KOPF_PEERING_API}/namespaces/{ns}/kopfpeerings/{name}" for ns in namespaces]


class DriftLoop:
    """Thread `tkv-drift`: every `interval_s`, `refresh(namespace, name)` for each cache (unless paused)."""

    def __init__(
        self,
        kube: Callable[[], Reader],
        refresh: Callable[[str, str], None],
        *,
        interval_s: float,
        namespaces: Sequence[str],
        peering: Peering | None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._kube, self._refresh, self.interval_s = kube, refresh, interval_s
        self._namespaces, self._peering, self._clock = list(namespaces), peering, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tkv-drift", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Any thread; returns once a pass in progress has ended."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def paused(self) -> bool:
        """Whether a live peer outranks this operator (a missing peering object: it runs alone)."""
        if self._peering is None:
            return False
        for path in peering_paths(self._peering.name, self._namespaces):
            found = self._kube().read(path)
            if found and outranked(found.get("status") or {}, self._peering.priority, self._clock()):
                return True
        return False

    def run_once(self) -> int | None:
        """One pass (the loop's thread, or a test): the number of caches refreshed, None when paused."""
        if self.paused():
            return None
        count = 0
        for path in cache_paths(self._namespaces):
            for item in (self._kube().read(path) or {}).get("items") or []:
                if self._stop.is_set():
                    return count
                meta = item.get("metadata") or {}
                self._refresh(meta.get("namespace") or "", meta.get("name") or "")
                count += 1
        return count

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:  # the loop must outlive any one failure; the next pass retries
                log.exception("drift pass failed")
