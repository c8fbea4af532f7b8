"""The agent's KV-events part from its settings (built by `service.serve` on the start-up thread)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from tieredkv_agent.config import AgentSettings
from tieredkv_agent.events.announce import WalkAnnouncer
from tieredkv_agent.events.filter import EventFilter
from tieredkv_agent.events.publisher import KvEventPublisher, PublisherLimits
from tieredkv_agent.events.sources import BlockEvents
from tieredkv_agent.events.summary import MembershipSummary
from tieredkv_agent.events.summary_server import SummaryService
from tieredkv_agent.events.wire import pool_identity

log = logging.getLogger(__name__)


class EventsStartupError(Exception):
    """The events sockets could not be bound; the message says which and why."""


@dataclass(frozen=True, slots=True)
class AgentEvents:
    """The agent's events part: the publisher (metrics, shutdown) and its sources (the hooks)."""

    publisher: KvEventPublisher
    blocks: BlockEvents
    summary: SummaryService | None = None

    def start(self, is_leader: Callable[[], bool], *, native: bool) -> None:
        """Start the summary's walks, announcing what they find while `is_leader` (start-up thread)."""
        if self.summary is not None:
            WalkAnnouncer(self.blocks, is_leader, announce_new=native).attach(self.summary.summary)
            self.summary.start()

    def walk_now(self) -> None:
        """Walk the volume at once (the elector's thread, on gaining GC leadership: its snapshot comes
        now rather than an interval later)."""
        if self.summary is not None:
            self.summary.wake()

    def close(self) -> None:
        """Stop the summary, publish what is queued, close the sockets (main thread)."""
        if self.summary is not None:
            self.summary.stop()
        self.publisher.close()


def endpoints(settings: AgentSettings) -> tuple[str, str | None]:
    """The PUB and replay bind addresses: the pod IP when known, else every address."""
    host = settings.pod_ip or "*"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    replay = f"tcp://{host}:{settings.events_replay_port}" if settings.events_replay_port else None
    return f"tcp://{host}:{settings.events_port}", replay


def block_events(settings: AgentSettings) -> AgentEvents | None:
    """The publisher and its sources when `events_enabled`, else None (start-up thread)."""
    if not settings.events_enabled:
        return None
    limits = PublisherLimits(
        max_queue_events=settings.events_max_queue,
        replay_max_batches=settings.events_replay_batches,
        replay_max_bytes=settings.events_replay_bytes,
    )
    pub, replay = endpoints(settings)
    identity = pool_identity(settings.cache_namespace, settings.cache_name)
    event_filter = EventFilter.build(
        identity, settings.events_kinds, settings.events_models, settings.events_groups
    )
    try:
        publisher = KvEventPublisher(pub, replay, limits, event_filter)
    except zmq.ZMQError as exc:
        raise EventsStartupError(
            f"cannot bind the KV-events sockets {pub} / {replay}: {exc} "
            "(another agent on this host? set TIEREDKV_EVENTS_PORT and TIEREDKV_EVENTS_REPLAY_PORT)"
        ) from exc
    log.info(
        "KV events for %s on %s, replay on %s; publishing %s",
        identity,
        publisher.endpoint,
        publisher.replay_endpoint or "-",
        event_filter.describe(),
    )
    blocks = BlockEvents(publisher, identity)
    try:
        summary = summary_service(settings, blocks)
    except OSError as exc:
        publisher.close()
        raise EventsStartupError(
            f"cannot serve the membership summary on port {settings.events_summary_port}: "
            f"{exc.strerror or exc} (set TIEREDKV_EVENTS_SUMMARY_PORT, or 0 not to serve it)"
        ) from exc
    return AgentEvents(publisher, blocks, summary)


def summary_service(settings: AgentSettings, blocks: BlockEvents) -> SummaryService | None:
    """The HTTP membership summary when `events_summary_port` is set, bound; `AgentEvents.start` starts it."""
    if not settings.events_summary_port:
        return None
    summary = MembershipSummary(settings.store_dir)
    host = settings.pod_ip or "0.0.0.0"
    service = SummaryService(
        summary, host, settings.events_summary_port, settings.events_summary_interval_seconds
    )
    blocks.summary = summary
    blocks.root = settings.store_dir
    log.info("membership summary on http://%s:%d/kv/summary", host, service.port)
    return service
