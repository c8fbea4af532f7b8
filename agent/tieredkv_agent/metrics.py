"""The agent's Prometheus metrics: one registry, names `tieredkv_<noun>_<unit>[_total]`, bounded labels.

Every metric the agent exports is declared here (docs/metrics.md is checked against this registry).
Components keep plain counters; the collectors below read them at scrape time, on prometheus-client's
HTTP thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tieredkv_agent import __version__

if TYPE_CHECKING:
    from tieredkv_agent.capacity import CapacityManager
    from tieredkv_agent.tiers.file import FileTier

REGISTRY = CollectorRegistry(auto_describe=True)

BUILD = Info("tieredkv_agent_build", "Version of the running tieredkv agent", registry=REGISTRY)
BUILD.info({"version": __version__})

COMPAT = Info("tieredkv_agent_compat", "The cache profile this agent serves", registry=REGISTRY)
"""Labels: vllm_version, mode, config_hash (one value per agent process)."""

BLOCK_IO_SECONDS = Histogram(
    "tieredkv_block_io_duration_seconds",
    "Time to store or load one block file, queueing excluded (I/O worker threads observe it)",
    ["op"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
    registry=REGISTRY,
)


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


class FileTierCollector(Collector):
    """The file tier's blocks and bytes by result, queues, refusals, dedup, lookups and index size."""

    def __init__(self, tier: FileTier | None = None) -> None:
        self.tier = tier

    def collect(self) -> Iterator[Metric]:
        blocks = CounterMetricFamily(
            "tieredkv_blocks", "Blocks of finished store and load jobs, by result", labels=["op", "result"]
        )
        nbytes = CounterMetricFamily(
            "tieredkv_block_bytes", "Bytes of those blocks, by result", labels=["op", "result"]
        )
        lookups = CounterMetricFamily("tieredkv_lookups", "Lookup answers by result", labels=["result"])
        queued = GaugeMetricFamily("tieredkv_queue_blocks", "Blocks waiting for an I/O thread", labels=["op"])
        index = GaugeMetricFamily("tieredkv_index_keys", "Keys the lookup index holds", labels=["kind"])
        st = self.tier.stats() if self.tier is not None else None
        if st is not None:
            for (kind, status), count in st.pool.settled_blocks.items():
                blocks.add_metric([kind.value, status.name.lower()], count)
            for (kind, status), count in st.pool.settled_bytes.items():
                nbytes.add_metric([kind.value, status.name.lower()], count)
            for result, count in (
                ("hit", st.index.hits),
                ("miss", st.index.misses),
                ("retry", st.index.retries),
            ):
                lookups.add_metric([result], count)
            queued.add_metric(["load"], st.pool.queued_loads)
            queued.add_metric(["store"], st.pool.queued_stores)
            index.add_metric(["present"], st.index.positive_keys)
            index.add_metric(["missing"], st.index.negative_keys)
        yield from (blocks, nbytes, lookups, queued, index)
        pool = st.pool if st is not None else None
        yield GaugeMetricFamily(
            "tieredkv_queue_store_bytes",
            "Bytes of queued stores (bounded by the backlog limit)",
            value=pool.queued_store_bytes if pool else 0,
        )
        counters = [
            (
                "tieredkv_store_refused_jobs",
                "Store jobs dropped because the store backlog was full",
                pool.refused_jobs if pool else 0,
            ),
            (
                "tieredkv_store_refused_bytes",
                "Bytes of store jobs dropped for backlog",
                pool.refused_bytes if pool else 0,
            ),
            (
                "tieredkv_store_deduplicated_blocks",
                "Stores of a block already being written on this node",
                pool.deduplicated_blocks if pool else 0,
            ),
            (
                "tieredkv_store_admission_skipped_blocks",
                "Stores skipped by the reuse filter (storeAdmission)",
                st.stores_skipped if st else 0,
            ),
            (
                "tieredkv_store_admission_skipped_bytes",
                "Bytes not written because of the reuse filter",
                st.store_bytes_skipped if st else 0,
            ),
        ]
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=value)


CAPACITY = CapacityCollector()
REGISTRY.register(CAPACITY)
FILE_TIER = FileTierCollector()
REGISTRY.register(FILE_TIER)


def serve(host: str, port: int) -> None:
    """Start the /metrics endpoint on a daemon thread (called once, from the main thread)."""
    start_http_server(port, addr=host, registry=REGISTRY)
