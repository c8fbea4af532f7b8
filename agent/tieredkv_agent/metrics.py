"""The agent's Prometheus metrics: one registry, names `tieredkv_<noun>_<unit>[_total]`, bounded labels.

Every metric the agent exports is declared here (docs/metrics.md is checked against this registry).
Components keep plain counters; the collectors below read them at scrape time, on prometheus-client's
HTTP thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tieredkv_agent import __version__

if TYPE_CHECKING:
    from tieredkv_agent.capacity import CapacityManager

REGISTRY = CollectorRegistry(auto_describe=True)

BUILD = Info("tieredkv_agent_build", "Version of the running tieredkv agent", registry=REGISTRY)
BUILD.info({"version": __version__})


class CapacityCollector(Collector):
    """Usage of the shared volume and the GC's work, from a CapacityManager's counters."""

    def __init__(self, manager: CapacityManager | None = None) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        m = self.manager
        gauges = [
            ("tieredkv_gc_leader", "1 while this agent is the cache's GC leader", m.is_leader if m else 0),
            (
                "tieredkv_volume_usage_bytes",
                "Bytes of blocks in the cache's directory (last scan)",
                m and m.usage_bytes,
            ),
            (
                "tieredkv_volume_files",
                "Block files in the cache's directory (last scan)",
                m and m.usage_files,
            ),
            (
                "tieredkv_volume_limit_bytes",
                "Bytes the cache may use (capacity.maxBytes, else the filesystem size)",
                m and (m.max_bytes or m.fs_size_bytes),
            ),
            (
                "tieredkv_gc_scan_duration_seconds",
                "Duration of the last volume scan",
                m and m.last_scan_duration_seconds,
            ),
            (
                "tieredkv_gc_last_pass_timestamp_seconds",
                "Unix time the last GC pass ended",
                m and m.last_pass_timestamp_seconds,
            ),
        ]
        for name, doc, value in gauges:
            yield GaugeMetricFamily(name, doc, value=float(value or 0))
        counters = [
            ("tieredkv_gc_passes", "GC passes run by this agent as leader", m and m.passes_total),
            ("tieredkv_gc_pass_errors", "GC passes that failed", m and m.pass_errors_total),
            (
                "tieredkv_gc_evicted_files",
                "Blocks deleted to bring usage under the low watermark",
                m and m.evicted_files_total,
            ),
            ("tieredkv_gc_evicted_bytes", "Bytes of blocks deleted by GC", m and m.evicted_bytes_total),
            (
                "tieredkv_gc_swept_temp_files",
                "Orphaned temporary files deleted",
                m and m.swept_temp_files_total,
            ),
        ]
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=float(value or 0))


CAPACITY = CapacityCollector()
REGISTRY.register(CAPACITY)


def serve(host: str, port: int) -> None:
    """Start the /metrics endpoint on a daemon thread (called once, from the main thread)."""
    start_http_server(port, addr=host, registry=REGISTRY)
