"""The operator's Prometheus metrics: one registry, names `tieredkv_<noun>_<unit>[_total]`, bounded labels.

Every metric the operator exports is declared here (docs/metrics.md is checked against this registry).
Label values come from closed sets (`op`, `result`, `webhook`, `outcome`, `skip_reason`, `phase`, ...) and
are pre-created, so every series exists at zero from the start. The per-cache gauges carry `namespace` and
`cache`: one series set per TieredKVCache, which is as bounded as the caches themselves.

The reconcile and the webhooks record into plain prometheus-client metrics; the per-cache gauges are read at
scrape time (on prometheus-client's HTTP thread) from a table the cache event handler keeps current. No kopf
and no API client here: callers hand in plain dicts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tieredkv_operator import __version__
from tieredkv_operator import conditions as c
from tieredkv_operator.admission.injection_model import SkipReason
from tieredkv_operator.conditions import ConditionStatus, ConditionType, Phase
from tieredkv_operator.spec import CapacitySpec

REGISTRY = CollectorRegistry(auto_describe=True)

OP_APPLY: Final = "apply"
"""A full reconcile: build, apply, observe, status (create, update, resume, drift timer, child events)."""
OP_REFRESH: Final = "refresh"
"""A status-only pass after a pod of the cache changed: nothing is written but the status."""
RESULTS: Final = ("success", "failed", "invalid", "exception")
"""success: every child applied; failed: an API call failed (Ready=False ReconcileError); invalid: the spec
did not validate (ConfigValid=False); exception: an unexpected error escaped (kopf retries)."""

WEBHOOK_PODS: Final = "pods"
WEBHOOK_CACHES: Final = "caches"
POD_OUTCOMES: Final = ("injected", "unchanged", "skipped", "ignored")
"""injected: the pod was wired to a cache; unchanged: nothing to do (already injected); skipped: left alone
with a tieredkv.io/skip-reason; ignored: a namespace this operator does not serve."""
CACHE_OUTCOMES: Final = ("allowed", "denied")

BUILD = Info("tieredkv_operator_build", "Version of the running tieredkv operator", registry=REGISTRY)
BUILD.info({"version": __version__})

RECONCILES = Counter(
    "tieredkv_reconciles",
    "Reconciles of TieredKVCaches by kind and result",
    ["op", "result"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "tieredkv_reconcile_duration_seconds",
    "Wall time of one reconcile, API calls included",
    ["op"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
ADMISSIONS = Counter(
    "tieredkv_webhook_admissions",
    "Admission requests answered, by webhook, outcome and (for skipped pods) skip reason",
    ["webhook", "outcome", "skip_reason"],
    registry=REGISTRY,
)
ADMISSION_SECONDS = Histogram(
    "tieredkv_webhook_admission_duration_seconds",
    "Time the operator spent deciding one admission request (TLS and transport excluded)",
    ["webhook"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)

for _op in (OP_APPLY, OP_REFRESH):
    RECONCILE_SECONDS.labels(_op)
    for _result in RESULTS:
        RECONCILES.labels(_op, _result)
for _outcome in POD_OUTCOMES:
    if _outcome != "skipped":
        ADMISSIONS.labels(WEBHOOK_PODS, _outcome, "")
for _reason in SkipReason:
    ADMISSIONS.labels(WEBHOOK_PODS, "skipped", _reason.value)
for _outcome in CACHE_OUTCOMES:
    ADMISSIONS.labels(WEBHOOK_CACHES, _outcome, "")
for _webhook in (WEBHOOK_PODS, WEBHOOK_CACHES):
    ADMISSION_SECONDS.labels(_webhook)


def reconcile_result(status: dict[str, Any]) -> str:
    """success, failed or invalid, read off the status a reconcile computed."""
    reasons = {c.get("type"): c.get("reason") for c in status.get("conditions") or []}
    if reasons.get(ConditionType.CONFIG_VALID.value) in (c.INVALID_SPEC, c.UNSUPPORTED_VLLM_VERSION):
        return "invalid"
    if reasons.get(ConditionType.READY.value) == c.RECONCILE_ERROR:
        return "failed"
    return "success"


@contextmanager
def timed_reconcile(apply: bool) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Time one reconcile; the body calls the yielded function with the status it computed.

    A body that raises (or never reports) counts as result `exception`.
    """
    op = OP_APPLY if apply else OP_REFRESH
    started = time.monotonic()
    seen: list[str] = []
    try:
        yield lambda status: seen.append(reconcile_result(status))
    finally:
        RECONCILE_SECONDS.labels(op).observe(time.monotonic() - started)
        RECONCILES.labels(op, seen[-1] if seen else "exception").inc()


def record_admission(webhook: str, outcome: str, skip_reason: str, seconds: float) -> None:
    ADMISSIONS.labels(webhook, outcome, skip_reason).inc()
    ADMISSION_SECONDS.labels(webhook).observe(seconds)


@dataclass
class CacheSample:
    """What the gauges say about one TieredKVCache, read from its object as the API server has it."""

    phase: str
    desired: int
    ready: int
    conditions: dict[str, str] = field(default_factory=dict)
    high_watermark: float = CapacitySpec().high_watermark
    low_watermark: float = CapacitySpec().low_watermark

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> CacheSample:
        status = body.get("status") or {}
        agents = status.get("agents") or {}
        capacity = (body.get("spec") or {}).get("capacity") or {}
        conditions = {str(c.get("type")): str(c.get("status")) for c in status.get("conditions") or []}
        return cls(
            phase=str(status.get("phase") or Phase.PENDING.value),
            desired=int(agents.get("desired") or 0),
            ready=int(agents.get("ready") or 0),
            conditions=conditions,
            high_watermark=float(capacity.get("highWatermark", CapacitySpec().high_watermark)),
            low_watermark=float(capacity.get("lowWatermark", CapacitySpec().low_watermark)),
        )


class CacheCollector(Collector):
    """Caches by phase, and per cache: agents, conditions and GC watermarks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._caches: dict[tuple[str, str], CacheSample] = {}

    def observe(self, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        sample = CacheSample.from_body(body)
        with self._lock:
            self._caches[(str(meta.get("namespace") or ""), str(meta.get("name") or ""))] = sample

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._caches.pop((namespace, name), None)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            caches = dict(self._caches)
        by_phase = GaugeMetricFamily("tieredkv_caches", "TieredKVCaches by phase", labels=["phase"])
        for phase in Phase:
            by_phase.add_metric([phase.value], sum(1 for s in caches.values() if s.phase == phase.value))
        agents = GaugeMetricFamily(
            "tieredkv_cache_agents",
            "Agents of a cache: desired and ready",
            labels=["namespace", "cache", "state"],
        )
        conds = GaugeMetricFamily(
            "tieredkv_cache_condition",
            "1 for the status each condition of a cache has now, 0 for the other two",
            labels=["namespace", "cache", "type", "status"],
        )
        marks = GaugeMetricFamily(
            "tieredkv_cache_watermark_ratio",
            "GC watermarks of a cache, as fractions of its byte limit",
            labels=["namespace", "cache", "level"],
        )
        for (ns, name), s in sorted(caches.items()):
            agents.add_metric([ns, name, "desired"], s.desired)
            agents.add_metric([ns, name, "ready"], s.ready)
            for kind in ConditionType:
                now = s.conditions.get(kind.value, ConditionStatus.UNKNOWN.value)
                for status in ConditionStatus:
                    conds.add_metric([ns, name, kind.value, status.value], 1 if now == status.value else 0)
            marks.add_metric([ns, name, "high"], s.high_watermark)
            marks.add_metric([ns, name, "low"], s.low_watermark)
        yield from (by_phase, agents, conds, marks)


CACHES = CacheCollector()
REGISTRY.register(CACHES)


def serve(address: str) -> None:
    """Start the /metrics endpoint at `host:port` on a daemon thread (called once, before kopf runs)."""
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=REGISTRY)
