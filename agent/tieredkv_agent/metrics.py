"""The agent's Prometheus metrics: names `tieredkv_<noun>_<unit>[_total]`, bounded labels.

`AgentMetrics` is built once, by the agent's start-up (`service.serve`), and its parts are passed down:
`observe_block_io` to the file tier, the components themselves to the collectors. Nothing is registered at
import time. Every metric the agent exports is declared here (docs/metrics.md is checked against
`AgentMetrics().registry`). Components keep plain counters; the collectors read them at scrape time, on
prometheus-client's HTTP thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tieredkv_agent import __version__
from tieredkv_agent.engine.jobs import JobKind, KeyStatus

if TYPE_CHECKING:
    from tieredkv_agent.api.server import AgentServer
    from tieredkv_agent.capacity import CapacityManager
    from tieredkv_agent.events import KvEventPublisher
    from tieredkv_agent.tiers.file import FileTier
    from tieredkv_agent.tiers.ram import RamPool, RamStats

BLOCK_IO_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


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


class TiersCollector(Collector):
    """Per-tier hits, misses and evictions (`tier` = ram, file) and the RAM pool's own counters.

    The file tier's figures come from the FileTierCollector's tier and the CapacityCollector's manager, so
    each is wired once; the RAM series exist at zero while no RAM tier is configured.
    """

    def __init__(
        self, files: FileTierCollector, capacity: CapacityCollector, ram: RamPool | None = None
    ) -> None:
        self.files = files
        self.capacity = capacity
        self.ram = ram

    def collect(self) -> Iterator[Metric]:
        ram = self.ram.stats() if self.ram is not None else None
        st = self.files.tier.stats() if self.files.tier is not None else None
        settled = st.pool.settled_blocks if st is not None else {}
        manager = self.capacity.manager
        per_tier = [
            (
                "tieredkv_tier_hit_blocks",
                "Blocks of load jobs served by the tier",
                ram.load_hits if ram else 0,
                settled.get((JobKind.LOAD, KeyStatus.DONE), 0),
            ),
            (
                "tieredkv_tier_miss_blocks",
                "Blocks of load jobs the tier did not hold (ram: then read from files)",
                ram.load_misses if ram else 0,
                settled.get((JobKind.LOAD, KeyStatus.MISSING), 0),
            ),
            (
                "tieredkv_tier_evicted_blocks",
                "Blocks evicted from the tier (ram: least recently used; file: GC, leader only)",
                ram.evictions if ram else 0,
                manager.evicted_files_total if manager else 0,
            ),
        ]
        for name, doc, in_ram, in_files in per_tier:
            family = CounterMetricFamily(name, doc, labels=["tier"])
            family.add_metric(["ram"], in_ram)
            family.add_metric(["file"], in_files)
            yield family
        yield from _ram_families(ram)


def _ram_families(ram: RamStats | None) -> Iterator[Metric]:
    """The RAM pool's lookups, cached and uncached blocks, copy failures and bytes (zeros without one)."""
    lookups = CounterMetricFamily("tieredkv_ram_lookups", "RAM-tier lookup answers", labels=["result"])
    lookups.add_metric(["hit"], ram.lookup_hits if ram else 0)
    lookups.add_metric(["miss"], ram.lookup_misses if ram else 0)
    cached = CounterMetricFamily(
        "tieredkv_ram_cached_blocks",
        "Blocks copied into the RAM pool, by what brought them",
        labels=["source"],
    )
    cached.add_metric(["store"], ram.cached_from_stores if ram else 0)
    cached.add_metric(["load"], ram.cached_from_loads if ram else 0)
    uncached = CounterMetricFamily(
        "tieredkv_ram_uncached_blocks", "Blocks the RAM pool did not take, by reason", labels=["reason"]
    )
    uncached.add_metric(["no_room"], ram.no_room if ram else 0)
    uncached.add_metric(["block_size"], ram.bypassed if ram else 0)
    yield from (lookups, cached, uncached)
    yield CounterMetricFamily(
        "tieredkv_ram_copy_failed_blocks",
        "Blocks whose copy into or out of the RAM pool failed",
        value=ram.copy_failures if ram else 0,
    )
    yield GaugeMetricFamily(
        "tieredkv_ram_usage_bytes", "Bytes of blocks held in the RAM pool", value=ram.used_bytes if ram else 0
    )
    yield GaugeMetricFamily(
        "tieredkv_ram_limit_bytes",
        "Bytes the RAM pool may hold (ramTierBytes; 0 when off)",
        value=ram.capacity_bytes if ram else 0,
    )


class ApiCollector(Collector):
    """The socket server's refusals by reason (every reason present, zero until one happens)."""

    def __init__(self, server: AgentServer | None = None) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        from tieredkv_common.agent_limits import REFUSAL_REASONS

        family = CounterMetricFamily(
            "tieredkv_api_refusals",
            "Connections, jobs and Hellos the socket server refused for a limit, by reason",
            labels=["reason"],
        )
        counts = self.server.refusal_counts() if self.server is not None else {}
        for reason in REFUSAL_REASONS:
            family.add_metric([reason], counts.get(reason, 0))
        yield family
        yield GaugeMetricFamily(
            "tieredkv_api_connections",
            "Connections the socket server serves now",
            value=self.server.connections if self.server is not None else 0,
        )
        yield GaugeMetricFamily(
            "tieredkv_api_staged_bytes",
            "Bytes of Store and Load jobs staged in the agent's memory now, all connections together",
            value=self.server.staged_bytes if self.server is not None else 0,
        )


class EventsCollector(Collector):
    """The KV-events publisher's counters (all zero while events are off)."""

    def __init__(self, publisher: KvEventPublisher | None = None) -> None:
        self.publisher = publisher

    def collect(self) -> Iterator[Metric]:
        s = self.publisher.stats() if self.publisher is not None else None
        counters = [
            ("tieredkv_events_published", "KV events sent to subscribers", s and s.published_events),
            ("tieredkv_events_batches", "KV event batches (messages) sent", s and s.published_batches),
            (
                "tieredkv_events_dropped",
                "KV events dropped because the queue was full",
                s and s.dropped_events,
            ),
            ("tieredkv_events_replays", "Replay requests served", s and s.replays),
            (
                "tieredkv_events_filtered",
                "Block changes not published because spec.events.filter leaves them out",
                s and s.filtered_events,
            ),
        ]
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=float(value or 0))
        gauges = [
            (
                "tieredkv_events_subscriptions",
                "Topic subscriptions of connected subscribers",
                s and s.subscriptions,
            ),
            ("tieredkv_events_queued", "KV events waiting for the publisher thread", s and s.queued_events),
            ("tieredkv_events_replay_bytes", "Bytes of batches kept for replay", s and s.replay_bytes),
        ]
        for name, doc, value in gauges:
            yield GaugeMetricFamily(name, doc, value=float(value or 0))


class AgentMetrics:
    """One agent process's registry and collectors (built on the main thread at start-up)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        build = Info("tieredkv_agent_build", "Version of the running tieredkv agent", registry=self.registry)
        build.info({"version": __version__})
        self.compat = Info(
            "tieredkv_agent_compat", "The cache profile this agent serves", registry=self.registry
        )
        """Labels: vllm_version, mode, config_hash (one value per agent process)."""
        self.profile_mismatches = Counter(
            "tieredkv_profile_mismatches",
            "Hellos whose NONE_HASH fingerprint differed from the cache's, by what the agent did",
            ["action"],
            registry=self.registry,
        )
        """`action`: reject or warn."""
        self.block_io_seconds = Histogram(
            "tieredkv_block_io_duration_seconds",
            "Time to store or load one block file, queueing excluded (I/O worker threads observe it)",
            ["op"],
            buckets=BLOCK_IO_BUCKETS,
            registry=self.registry,
        )
        self.capacity = CapacityCollector()
        self.file_tier = FileTierCollector()
        self.tiers = TiersCollector(self.file_tier, self.capacity)
        self.api = ApiCollector()
        self.events = EventsCollector()
        for collector in (self.capacity, self.file_tier, self.tiers, self.api, self.events):
            self.registry.register(collector)

    def observe_block_io(self, op: str, seconds: float) -> None:
        """The file tier's `block_timer` (I/O worker threads)."""
        self.block_io_seconds.labels(op=op).observe(seconds)

    def serve(self, host: str, port: int) -> None:
        """Start the /metrics endpoint on a daemon thread (called once, from the main thread)."""
        start_http_server(port, addr=host, registry=self.registry)
