"""The agent's I/O engine, shared by its tiers. Never imports torch.

* `jobs`: block jobs, per-key statuses, results and completion sinks.
* `pools`: the dual-priority I/O thread pool (per-block tasks, store backlog, de-duplication, shutdown).
* `index`: HIT / MISS / RETRY answers from memory, with asynchronous stats and a background scan
  (`blockscan` lists the block files).
* `admission`: the reuse filter that keeps blocks asked for too rarely off the shared volume.
"""

from tieredkv_agent.engine.admission import AdmissionFilter, AdmissionStats
from tieredkv_agent.engine.index import IndexStats, LookupIndex, LookupResult
from tieredkv_agent.engine.jobs import (
    BlockJob,
    CompletionQueue,
    CompletionSink,
    JobKind,
    JobResult,
    JobState,
    KeyStatus,
)
from tieredkv_agent.engine.pools import BlockHandler, DualPriorityPool, PoolStats

__all__ = [
    "AdmissionFilter",
    "AdmissionStats",
    "BlockHandler",
    "BlockJob",
    "CompletionQueue",
    "CompletionSink",
    "DualPriorityPool",
    "IndexStats",
    "JobKind",
    "JobResult",
    "JobState",
    "KeyStatus",
    "LookupIndex",
    "LookupResult",
    "PoolStats",
]
