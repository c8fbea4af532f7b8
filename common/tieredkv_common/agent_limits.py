"""The bounds the node agent puts on its settings, shared with the operator's TieredKVCache model.

The agent's settings (`tieredkv_agent.config.AgentSettings`) and the operator's spec (`spec.agent`,
`spec.capacity`) both take their bounds from here, so admission refuses exactly what an agent would refuse
at start-up (a crash-looping DaemonSet with no reason shown). Standard library only.
"""

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
