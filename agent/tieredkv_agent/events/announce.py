"""Announcing what a walk of the volume finds: a snapshot for subscribers, and files vLLM wrote itself.

While this agent is the GC leader, after each walk of the membership summary (`summary.MembershipSummary`):

* the first walk since it became leader announces every block file on the volume (BlockStored): a
  restarted leader's replay ring then holds the whole volume, so a subscriber that starts late (or after
  a restart) can rebuild it from the replay socket, as far as the ring's bounds reach;
* in native mode, each later walk announces the files that appeared since the previous one (vLLM's own
  `fs` tier wrote them; no agent store saw them). In agent mode the agents' stores announce their files
  at once, so later walks announce nothing.

Duplicates are harmless (a BlockStored of a block already announced changes no subscriber's set). The
previous walk is kept as one sorted numpy array of fixed-size hashes per (namespace, group): 32 bytes per
block for sha256 (32 MB per million blocks).

Threads: called on the `tkv-summary` thread; `publish_waiting` lets it wait for room in the events queue
(it is no I/O thread), so a snapshot of millions of blocks is paced instead of dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from tieredkv_agent.events.sources import BlockEvents
from tieredkv_agent.events.summary import Walked

log = logging.getLogger(__name__)


class WalkAnnouncer:
    """The summary's `on_walk`: snapshot on gaining leadership, new files each walk in native mode."""

    def __init__(self, blocks: BlockEvents, is_leader: Callable[[], bool], *, announce_new: bool) -> None:
        self.blocks = blocks
        self.is_leader = is_leader
        self.announce_new = announce_new
        self._previous: dict[tuple[str, int], np.ndarray] | None = None
        self.announced = 0

    def __call__(self, walked: Walked) -> None:
        if not self.is_leader():
            self._previous = None  # a later leadership starts with a snapshot again
            return
        current = {key: _sorted(hashes) for key, hashes in walked.items() if hashes}
        previous, self._previous = self._previous, current
        if previous is not None and not self.announce_new:
            return
        count = 0
        for (namespace, group), present in current.items():
            old = previous.get((namespace, group)) if previous is not None else None
            fresh = present
            if old is not None and old.dtype == present.dtype:
                fresh = present[~np.isin(present, old, assume_unique=True)]
            width = fresh.dtype.itemsize
            for block_hash in fresh.tolist():  # numpy drops trailing NUL bytes of S values: pad them back
                self.blocks.announce(namespace, block_hash.ljust(width, b"\0"), group)
            count += len(fresh)
        self.announced += count
        if count:
            kind = "snapshot of" if previous is None else "new"
            log.info("announced %s %d block files found by a walk of the volume", kind, count)


def _sorted(hashes: list[bytes]) -> np.ndarray:
    width = max(map(len, hashes))
    return np.unique(np.array(hashes, dtype=f"S{width}"))
