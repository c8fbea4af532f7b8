"""The agent's KV-events part from its settings (built by `service.serve` on the start-up thread)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import zmq

from tieredkv_agent.config import AgentSettings
from tieredkv_agent.events.publisher import KvEventPublisher, PublisherLimits
from tieredkv_agent.events.sources import BlockEvents
from tieredkv_agent.events.wire import pool_identity

log = logging.getLogger(__name__)


class EventsStartupError(Exception):
    """The events sockets could not be bound; the message says which and why."""


@dataclass(frozen=True, slots=True)
class AgentEvents:
    """The agent's events part: the publisher (metrics, shutdown) and its sources (the hooks)."""

    publisher: KvEventPublisher
    blocks: BlockEvents


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
    try:
        publisher = KvEventPublisher(pub, replay, limits)
    except zmq.ZMQError as exc:
        raise EventsStartupError(
            f"cannot bind the KV-events sockets {pub} / {replay}: {exc} "
            "(another agent on this host? set TIEREDKV_EVENTS_PORT and TIEREDKV_EVENTS_REPLAY_PORT)"
        ) from exc
    identity = pool_identity(settings.cache_namespace, settings.cache_name)
    log.info(
        "KV events for %s on %s, replay on %s", identity, publisher.endpoint, publisher.replay_endpoint or "-"
    )
    return AgentEvents(publisher, BlockEvents(publisher, identity))
