"""KV events for the shared tier: tell prefix-aware routers which blocks the cache's volume holds.

`wire` is vLLM's KV-events format, `publisher` the ZMQ thread (PUB + replay), `sources` turns block-file
changes (a store's publish, a GC deletion) into events. See docs/events.md.
"""

from tieredkv_agent.events.assemble import AgentEvents, EventsStartupError, block_events
from tieredkv_agent.events.filter import EventFilter
from tieredkv_agent.events.publisher import Change, KvEventPublisher, PublisherLimits, PublisherStats
from tieredkv_agent.events.sources import BlockEvents, parse_block_path
from tieredkv_agent.events.wire import pool_identity, topic_for

__all__ = [
    "AgentEvents",
    "BlockEvents",
    "Change",
    "EventFilter",
    "EventsStartupError",
    "KvEventPublisher",
    "PublisherLimits",
    "PublisherStats",
    "block_events",
    "parse_block_path",
    "pool_identity",
    "topic_for",
]
