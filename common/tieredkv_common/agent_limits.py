"""The node agent's bounds and resource limits, in one place the operator shares.

Settings bounds: the agent's settings (`tieredkv_agent.config.AgentSettings`) and the operator's spec
(`spec.agent`, `spec.capacity`) both take them from here, so admission refuses exactly what an agent would
refuse at start-up (a crash-looping DaemonSet with no reason shown).

Resource limits: the defaults of the agent's limits; docs/security.md lists what each one bounds. Every
refusal a limit causes is answered with an error code, counted in `tieredkv_api_refusals_total{reason=...}`
and logged; `REFUSAL_REASONS` is the closed set of that label's values.

Standard library only (this package is copied into vLLM pods).
"""

from __future__ import annotations

from typing import Final

MIN_THREADS: Final = 1
MAX_THREADS: Final = 1024
"""Bounds of the agent's read and write I/O thread counts."""

HIGH_WATERMARK_EXCLUSIVE_MIN: Final = 0.0
HIGH_WATERMARK_MAX: Final = 1.0
"""0 < highWatermark <= 1 (a fraction of maxBytes)."""
LOW_WATERMARK_EXCLUSIVE_MIN: Final = 0.0
LOW_WATERMARK_EXCLUSIVE_MAX: Final = 1.0
"""0 < lowWatermark < 1: GC refuses to evict down to nothing (and lowWatermark < highWatermark)."""

MAX_BYTES_EXCLUSIVE_MIN: Final = 0
"""maxBytes > 0 when set: an empty capacity would evict every block at once."""
MIN_RAM_TIER_BYTES: Final = 0
MIN_STORE_ADMISSION_THRESHOLD: Final = 0
MIN_TRACKER_SIZE: Final = 1

MAX_SOCKET_PATH_BYTES: Final = 107
"""sun_path holds 108 bytes including the terminating NUL."""
MAX_PATH_SEGMENT_BYTES: Final = 255
"""NAME_MAX of Linux filesystems: a longer directory name fails with ENAMETOOLONG."""
MAX_SUB_PATH_BYTES: Final = 512
"""Room left under PATH_MAX (4096) for the mount point, the namespace directory and the block paths."""
FORBIDDEN_HOST_DIRS: Final = ("/proc", "/sys", "/dev", "/boot", "/etc", "/bin", "/sbin", "/lib", "/usr")
"""Host directories an agent's socket directory may not be (or be under): kernel interfaces and the OS."""

MiB = 1 << 20
GiB = 1 << 30

MAX_CONNECTIONS = 64
"""Connections served at once (each costs two threads); the next one gets a fatal Error and is closed."""
MAX_INFLIGHT_KEYS = 65_536
"""Per connection: keys of Store and Load jobs accepted and not yet reported (bounds their bookkeeping)."""
MAX_STAGED_BYTES = 512 * MiB
"""Per connection: bytes of its jobs staged in the agent's memory at once; more jobs wait, none is refused."""
MAX_TOTAL_STAGED_BYTES = 2 * GiB
"""Per agent: the same, summed over every connection (bounds the agent's staging memory)."""
STAGING_CHUNK_BYTES = 64 * MiB
"""A job is staged in chunks of at most this (and the connection's limit): any job size costs one chunk."""
MAX_IDLE_STAGING_BYTES = 256 * MiB
"""Per agent: staging buffers of finished jobs kept for reuse (mapping fresh memory per job is slow)."""
MAX_BUFFERED_FRAME_BYTES = 64 * MiB
"""Per agent: bytes of partial frames held for all connections together; a connection over its share
when the budget is spent is closed."""
BUFFERED_FRAME_SHARE_BYTES = 256 * 1024
"""A connection holding at most this much partial frame is never closed for the agent-wide budget."""
MAX_REGION_BYTES = 1 << 40
"""The largest region a Hello may declare (the agent never maps it; this bounds what a job may name)."""
MAX_SEND_QUEUE_BYTES = 16 * MiB
"""Per connection: reply bytes queued for a client that does not read them; beyond it, it is closed."""
SEND_TIMEOUT_S = 10.0
"""A reply the client does not take within this time closes the connection."""
RAM_MAX_SLOTS = 1 << 20
"""The RAM tier holds at most this many blocks: smaller blocks than capacity / RAM_MAX_SLOTS bypass it,
so the pool's index stays bounded whatever block size a client declares."""
RAM_MIN_BLOCK_BYTES = 4096
"""Blocks smaller than this are never cached in RAM."""

REFUSAL_REASONS = (
    "connections",
    "inflight_keys",
    "buffered_bytes",
    "region_bytes",
    "send_queue",
    "block_size",
    "namespace",
    "region_io",
    "accept_error",
)
"""Values of the `reason` label of `tieredkv_api_refusals_total` (bounded: nothing else is counted)."""

MAX_EVENTS_FILTER_ITEMS: Final = 64
"""Most models, or KV-cache groups, one `spec.events.filter` may name (both bounds are the CR's too)."""
MAX_MODEL_NAME_BYTES: Final = 256
"""Longest model name a `spec.events.filter.models` entry may be."""
