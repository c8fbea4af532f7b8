"""`tieredkv-agent run`: start the agent's parts from its settings and keep them running until SIGTERM.

The main thread calls `serve`; the parts run on their own threads (metrics HTTP server, GC leader
election and passes) and are stopped in reverse order.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from tieredkv_agent import __version__
from tieredkv_agent.api.protocol import none_hash_fingerprint
from tieredkv_agent.api.server import AgentLimits, AgentServer
from tieredkv_agent.api.session import Limits
from tieredkv_agent.api.socket_lock import SocketPathError
from tieredkv_agent.capacity import CapacityManager, FileLockElector, LeaderElector
from tieredkv_agent.config import AgentSettings
from tieredkv_agent.events import AgentEvents, EventsStartupError, block_events
from tieredkv_agent.metrics import AgentMetrics
from tieredkv_agent.report import MismatchReporter, in_cluster_patch
from tieredkv_agent.store.hashing import HashAlgo, SeedRule, UnshareableNoneHashError, none_hash_for_env
from tieredkv_agent.store.writers import WriterRegistration, sweep_dead_writers
from tieredkv_agent.tiers.base import Tier
from tieredkv_agent.tiers.file import FileTier

log = logging.getLogger("tieredkv_agent")
SOCKET_FILE = "agent.sock"
"""The socket file in the cache's socket directory (the operator renders the same path into vLLM's config)."""


class StartupError(Exception):
    """The agent cannot start; the message says why and what to fix."""


def check_store_dir(settings: AgentSettings) -> None:
    """The store directory must exist and take a file: fail at start, not on the first store."""
    store = settings.store_dir
    if not store.is_dir():
        raise StartupError(f"store directory {store} does not exist: mount the cache's volume there")
    try:
        with tempfile.NamedTemporaryFile(dir=store, prefix=".tieredkv-probe-", suffix=".tmp"):
            pass
    except OSError as exc:
        raise StartupError(f"store directory {store} is not writable: {exc.strerror or exc}") from exc


def elector(settings: AgentSettings) -> LeaderElector:
    """The Lease elector inside a cluster, else a lock file on the volume (single node or dev)."""
    if settings.gc_lease_name and os.environ.get("KUBERNETES_SERVICE_HOST"):
        from tieredkv_agent.capacity.lease import LeaseElector

        return LeaseElector.in_cluster(
            settings.cache_name, settings.identity, namespace=settings.cache_namespace or None
        )
    return FileLockElector(settings.store_dir, settings.identity)


def capacity_manager(settings: AgentSettings, leader: LeaderElector | None) -> CapacityManager:
    return CapacityManager(
        settings.store_dir,
        max_bytes=settings.max_bytes,
        high_watermark=settings.high_watermark,
        low_watermark=settings.low_watermark,
        grace_s=settings.gc_grace_seconds,
        temp_timeout_s=settings.gc_temp_timeout_seconds,
        scan_interval_s=settings.gc_scan_interval_seconds,
        scan_threads=settings.gc_scan_threads,
        elector=leader,
    )


def serve(settings: AgentSettings, stop: threading.Event) -> None:
    """Run until `stop` is set (main thread). Raises StartupError before starting anything it cannot run."""
    check_store_dir(settings)
    log.info(
        "tieredkv-agent %s starting: %s; compat profile: vllm %r config %r",
        __version__,
        settings.summary(),
        settings.vllm_version or "?",
        settings.vllm_config_hash or "?",
    )
    metrics = AgentMetrics()
    metrics.compat.info(
        {
            "vllm_version": settings.vllm_version,
            "mode": settings.mode,
            "config_hash": settings.vllm_config_hash,
        }
    )
    writer = WriterRegistration(settings.store_dir)
    tag = writer.register()
    manager = capacity_manager(settings, elector(settings))
    metrics.capacity.manager = manager
    events = kv_events(settings, metrics, manager)
    files = file_tier(settings, metrics, writer_tag=tag, on_no_space=manager.volume_full, events=events)
    tier = data_tier(settings, files, metrics)
    reporter = mismatch_reporter(settings) if settings.mode == "agent" else None
    server: AgentServer | None = None

    def close(*, started: bool) -> None:
        """Stop what start-up made, newest first (main thread: on a start-up failure or at the end)."""
        if server is not None:
            server.close()
        if reporter is not None:
            reporter.stop()
        if started:
            manager.stop(release=True)
        tier.shutdown()
        close_events(events)
        writer.close()

    try:
        server = socket_server(settings, tier, metrics, reporter) if settings.mode == "agent" else None
        metrics.api.server = server
        if settings.metrics_port:
            _serve_metrics(metrics, settings)
    except BaseException:
        close(started=False)
        raise
    if tag:
        threading.Thread(target=_sweep_dead_writers, args=(settings, tag, manager), name="tkv-sweep").start()
    manager.start()
    try:
        stop.wait()
    finally:
        log.info("tieredkv-agent stopping")
        close(started=True)


def _serve_metrics(metrics: AgentMetrics, settings: AgentSettings) -> None:
    """The /metrics endpoint; a taken port is a StartupError naming it (main thread, at start-up)."""
    address = settings.pod_ip or "0.0.0.0"
    try:
        metrics.serve(address, settings.metrics_port)
    except OSError as exc:
        raise StartupError(
            f"cannot serve metrics on {address}:{settings.metrics_port}: {exc.strerror or exc} "
            "(another agent on this host? set TIEREDKV_METRICS_PORT, or 0 to disable metrics)"
        ) from exc


def kv_events(settings: AgentSettings, metrics: AgentMetrics, manager: CapacityManager) -> AgentEvents | None:
    """The KV-events publisher when `events_enabled`, told of GC's deletions (start-up thread).

    See docs/events.md: this agent's stores are announced through the file tier (`file_tier(events=)`).
    """
    try:
        events = block_events(settings)
    except EventsStartupError as exc:
        raise StartupError(str(exc)) from None
    if events is not None:
        metrics.events.publisher = events.publisher
        manager.on_evicted = events.blocks.evicted
        manager.on_leader_gained = events.walk_now
        events.start(lambda: manager.is_leader, native=settings.mode == "native")
    return events


def close_events(events: AgentEvents | None) -> None:
    """Publish what is queued and close the events sockets (main thread, after the tier stopped)."""
    if events is not None:
        events.close()


def _sweep_dead_writers(settings: AgentSettings, tag: str, manager: CapacityManager) -> None:
    """Delete the temp files of agents that died, once, at start-up (the `tkv-sweep` thread)."""
    try:
        report = sweep_dead_writers(settings.store_dir, tag)
    except Exception:
        log.exception("sweeping the temp files of dead writers failed")
        return
    manager.swept_temp_files_total += report.temp_files
    manager.swept_temp_bytes_total += report.temp_bytes
    log.info(
        "swept %d temp files (%d bytes) of %d dead writers in %.3f s",
        report.temp_files,
        report.temp_bytes,
        report.dead_writers,
        report.duration_s,
    )


def expected_fingerprint(settings: AgentSettings) -> str | None:
    """The NONE_HASH fingerprint every instance of this cache must present (None: cannot be known here).

    It follows from the cache's PYTHONHASHSEED (the operator injects the same Secret into agents and vLLM
    pods), the hash algorithm and the vLLM line's seeding rule. The seed itself is never logged or sent.
    """
    if not settings.vllm_version:
        return None
    try:
        algo = HashAlgo(settings.hash_algo)
        none_hash = none_hash_for_env(algo, SeedRule.for_vllm(settings.vllm_version), os.environ)
    except (ValueError, UnshareableNoneHashError) as exc:
        log.warning("no expected NONE_HASH fingerprint, instances are not checked: %s", exc)
        return None
    return none_hash_fingerprint(none_hash)


def mismatch_reporter(settings: AgentSettings) -> MismatchReporter | None:
    """Records refused Hellos in the cache's status, inside a cluster (agent startup thread)."""
    if not (os.environ.get("KUBERNETES_SERVICE_HOST") and settings.cache_namespace and settings.node_name):
        return None
    patch = in_cluster_patch(settings.cache_namespace, settings.cache_name)
    return MismatchReporter(settings.node_name, patch)


def socket_server(
    settings: AgentSettings, tier: Tier, metrics: AgentMetrics, reporter: MismatchReporter | None = None
) -> AgentServer:
    """The node socket vLLM instances of this cache connect to (agent mode), in the cache's socket dir."""

    def mismatch_seen(instance: str, offered: str, expected: str, action: str) -> None:
        """Count it and report it to the cache's status (socket connection threads)."""
        metrics.profile_mismatches.labels(action=action).inc()
        if reporter is not None:
            reporter.record(instance, offered, expected, action)

    try:
        server = AgentServer(
            settings.socket_dir / SOCKET_FILE,
            tier,
            agent_version=__version__,
            limits=Limits(max_inflight_keys=settings.max_inflight_keys),
            agent_limits=agent_limits(settings),
            expected_fingerprint=expected_fingerprint(settings),
            on_mismatch=settings.on_profile_mismatch,
            on_mismatch_seen=mismatch_seen,
        )
    except SocketPathError as exc:
        raise StartupError(str(exc)) from None
    log.info("serving vLLM instances on %s", settings.socket_dir / SOCKET_FILE)
    return server


def agent_limits(settings: AgentSettings) -> AgentLimits:
    """The socket server's agent-wide limits from the settings."""
    return AgentLimits(
        max_connections=settings.max_connections,
        max_staged_bytes=settings.max_staged_bytes,
        max_total_staged_bytes=settings.max_total_staged_bytes,
        max_buffered_frame_bytes=settings.max_buffered_frame_bytes,
        max_region_bytes=settings.max_region_bytes,
        max_send_queue_bytes=settings.max_send_queue_bytes,
        send_timeout_s=settings.send_timeout_seconds,
    )


def file_tier(
    settings: AgentSettings,
    metrics: AgentMetrics | None = None,
    *,
    writer_tag: str = "",
    on_no_space: Callable[[], None] | None = None,
    events: AgentEvents | None = None,
) -> FileTier:
    """The shared-volume tier; in agent mode the socket server hands it the instances' block jobs."""
    hooks: dict[str, Any] = {}
    if events is not None:
        hooks["on_block_file"] = events.blocks.block_file
    if metrics is not None:
        hooks["block_timer"] = metrics.observe_block_io
    if on_no_space is not None:
        hooks["on_no_space"] = on_no_space
    files = FileTier(
        root_dir=settings.store_dir,
        read_threads=settings.read_threads,
        write_threads=settings.write_threads,
        store_threshold=settings.store_admission_threshold,
        max_tracker_size=settings.store_admission_max_tracker_size,
        writer_tag=writer_tag,
        **hooks,
    )
    if metrics is not None:
        metrics.file_tier.tier = files
    return files


def data_tier(settings: AgentSettings, files: FileTier, metrics: AgentMetrics | None = None) -> Tier:
    """The tier the socket server uses: the file tier, under a node RAM pool when `ram_tier_bytes` > 0.

    Only agent mode moves data through the agent, so only then is the pool built; the copy engine (and
    torch) is imported here and nowhere else in the agent's start-up.
    """
    if settings.ram_tier_bytes <= 0 or settings.mode != "agent":
        return files
    try:
        from tieredkv_agent.tiers.layered import LayeredTier
        from tieredkv_agent.tiers.ram import RamPool
    except ImportError as exc:
        if exc.name != "torch":
            raise
        raise StartupError(
            "ram_tier_bytes > 0 needs torch (the copy engine): pip install 'tieredkv[torch]', "
            "or set TIEREDKV_RAM_TIER_BYTES=0 to serve from the file tier alone"
        ) from exc

    pool = RamPool(settings.ram_tier_bytes, block_bytes=settings.ram_tier_block_bytes)
    if metrics is not None:
        metrics.tiers.ram = pool
    log.info(
        "RAM tier: %d bytes, blocks of %s",
        settings.ram_tier_bytes,
        settings.ram_tier_block_bytes or f"the first size of at least {pool.min_block_bytes} bytes",
    )
    return LayeredTier(ram=pool, lower=files)
