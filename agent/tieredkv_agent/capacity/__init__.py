"""Capacity management of the shared volume: one GC leader per cache keeps it under its watermarks.

* `layout`: which entries belong to the block layout (pure).
* `scan`: parallel, read-only scan -> usage per namespace, evictable bytes by mtime, leftovers.
* `evict`: LRU eviction plan and walk, orphaned temp files, empty directories.
* `touch`: mtime refresh on load hits, throttled per file (I/O worker threads).
* `leader`: the `LeaderElector` interface and the local `flock` elector; `lease`: the Lease elector.
* `manager`: `CapacityManager`, the GC thread tying these together; `inspection`: `inspect_volume`.

No prometheus here: the manager and the throttle expose plain counters for the metrics module.
"""

from tieredkv_agent.capacity.evict import (
    EvictionPlan,
    EvictionResult,
    SweepResult,
    evict,
    plan_eviction,
    sweep,
)
from tieredkv_agent.capacity.inspection import InspectReport, NamespaceReport, inspect_volume
from tieredkv_agent.capacity.leader import FileLockElector, LeaderCallback, LeaderElector
from tieredkv_agent.capacity.manager import CapacityManager, PassReport, Pressure, measure_pressure
from tieredkv_agent.capacity.scan import Cutoffs, MtimeHistogram, ScanResult, Usage, scan_volume
from tieredkv_agent.capacity.touch import TouchThrottle, touch_on_hit

__all__ = [
    "CapacityManager",
    "Cutoffs",
    "EvictionPlan",
    "EvictionResult",
    "FileLockElector",
    "InspectReport",
    "LeaderCallback",
    "LeaderElector",
    "MtimeHistogram",
    "NamespaceReport",
    "PassReport",
    "Pressure",
    "ScanResult",
    "SweepResult",
    "TouchThrottle",
    "Usage",
    "evict",
    "inspect_volume",
    "measure_pressure",
    "plan_eviction",
    "scan_volume",
    "sweep",
    "touch_on_hit",
]
