"""Tell the operator about refused (or warned) Hellos: the node's entry in the cache's status.

A vLLM instance whose NONE_HASH fingerprint differs from the agent's shares nothing with the others. The
socket server sees it first, so the agent records it where the operator reads it: a merge patch of
`status.profileMismatches.<node>` on its own TieredKVCache (the agent's Role grants `patch` on that one
object's status subresource). The operator turns entries seen recently into `SeedConsistent=False`
(reason `ProfileMismatch`) and the entry stays as a record; a node's next mismatch overwrites it.

Threads: `record` is called by socket connection threads (never waits); `tkv-mismatch-report` writes
at most one patch per `min_interval_s`, carrying the latest mismatch and the count since start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

Patch = Callable[[dict[str, Any]], None]
"""Applies a merge patch to the cache's status subresource (raises on failure)."""


@dataclass(frozen=True, slots=True)
class Mismatch:
    instance: str
    offered: str
    expected: str
    action: str
    seen_at: float


def status_patch(node: str, latest: Mismatch, count: int) -> dict[str, Any]:
    """The merge patch recording `latest` for `node` (pure)."""
    seen = datetime.fromtimestamp(latest.seen_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    report = {
        "instance": latest.instance,
        "offeredFingerprint": latest.offered,
        "expectedFingerprint": latest.expected,
        "action": latest.action,
        "count": count,
        "lastSeen": seen,
    }
    return {"status": {"profileMismatches": {node: report}}}


class MismatchReporter:
    """Coalesces mismatches and writes the node's status entry from its own thread."""

    def __init__(self, node: str, patch: Patch, *, min_interval_s: float = 5.0) -> None:
        self.node = node
        self._patch = patch
        self._min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._latest: Mismatch | None = None
        self._count = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tkv-mismatch-report", daemon=True)
        self._thread.start()

    def record(self, instance: str, offered: str, expected: str, action: str) -> None:
        """Note one mismatched Hello (connection threads; never waits)."""
        with self._lock:
            self._latest = Mismatch(instance, offered, expected, action, time.time())
            self._count += 1
        self._wake.set()

    def stop(self) -> None:
        """Write what is pending, then stop (agent's main thread)."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        written = 0
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                latest, count = self._latest, self._count
            if latest is not None and count != written:
                try:
                    self._patch(status_patch(self.node, latest, count))
                    written = count
                except Exception as exc:  # the API may be away for a while; the next mismatch retries
                    log.warning("could not record the profile mismatch in the cache status: %s", exc)
                    self._wake.set()
            if self._stopping.is_set():
                return
            self._stopping.wait(self._min_interval_s)


def in_cluster_patch(namespace: str, cache: str) -> Patch:
    """A `Patch` of the cache's status through the pod's service account (agent startup thread)."""
    from kubernetes import client, config

    config.load_incluster_config()
    api = client.CustomObjectsApi(client.ApiClient())

    def patch(body: dict[str, Any]) -> None:
        api.patch_namespaced_custom_object_status(
            "tieredkv.io",
            "v1alpha1",
            namespace,
            "tieredkvcaches",
            cache,
            body,
            _content_type="application/merge-patch+json",
        )

    return patch
