"""Announcing what a walk of the volume finds: a snapshot for subscribers, and files vLLM wrote itself.

While this agent is the GC leader, around each walk of the membership summary (`summary.MembershipSummary`):

* the first walk since it became leader is a snapshot: *before* the walk, an AllBlocksCleared for every
  model with a namespace directory on the volume; after it, a BlockStored for every block file it found.
  A restarted or newly elected leader's replay ring then starts with the whole volume, and whatever a
  subscriber held from before (stores of agents since restarted, deletions a dead leader never got to
  announce) is replaced by it. Clearing before the walk keeps concurrent stores safe: a file linked
  before the walk is in the snapshot, one linked after it is announced by its store after the clear;
* in native mode, each later walk announces the files that appeared since the previous one (vLLM's own
  `fs` tier wrote them; no agent store saw them). In agent mode the agents' stores announce their files
  at once, so later walks announce nothing;
* a model whose blocks are all gone from the volume gets an AllBlocksCleared on its topic: a model that
  had block files at the previous walk and of which this walk found none (the volume was wiped or
  replaced under the agents, a namespace's blocks were removed by hand). It is said once, until the model
  has blocks again. Files of that model that appear between the walk and the AllBlocksCleared are
  announced again right after it (the same check as below).

Duplicates are harmless (a BlockStored of a block already announced changes no subscriber's set). The
previous walk is kept as one sorted numpy array of fixed-size hashes per (namespace, group): 32 bytes per
block for sha256 (32 MB per million blocks).

Threads: called on the `tkv-summary` thread; `publish_waiting` lets it wait for room in the events queue
(it is no I/O thread), so a snapshot of millions of blocks is paced instead of dropped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tieredkv_agent.events.sources import BlockEvents
from tieredkv_agent.events.summary import MembershipSummary, Walked, walk_namespace
from tieredkv_agent.store.naming import parse_namespace_dir

log = logging.getLogger(__name__)


class WalkAnnouncer:
    """The summary's `on_walk`: snapshot on gaining leadership, new files each walk in native mode."""

    def __init__(self, blocks: BlockEvents, is_leader: Callable[[], bool], *, announce_new: bool) -> None:
        self.blocks = blocks
        self.is_leader = is_leader
        self.announce_new = announce_new
        self._previous: dict[tuple[str, int], np.ndarray] | None = None
        self._cleared: set[str] = set()
        """Models announced as cleared that have had no block since."""
        self._snapshot_due = False
        """The current walk began with a snapshot's clear: its blocks are announced whatever happens."""
        self.announced = 0
        self.clears = 0

    def attach(self, summary: MembershipSummary) -> WalkAnnouncer:
        """Hear `summary`'s walks, before and after each (start-up thread)."""
        summary.before_walk = self.before_walk
        summary.on_walk = self
        return self

    def before_walk(self) -> None:
        """A new leader's snapshot starts by clearing every model on the volume (the summary's
        `before_walk`, on the tkv-summary thread)."""
        if self._previous is not None or not self.is_leader():
            return
        self._snapshot_due = True
        models = sorted({self.blocks.model_of(namespace) for namespace in self._namespaces()})
        for model in models:
            self.blocks.cleared(model)
        self._cleared = set(models)
        self.clears += len(models)

    def __call__(self, walked: Walked) -> None:
        if not self._snapshot_due and (self._previous is None or not self.is_leader()):
            # Not leading, or leadership came during this walk, so it began without the clear: the next
            # walk (at once: gaining leadership wakes the walker) takes the snapshot.
            self._previous = None
            return
        current = {key: _sorted(hashes) for key, hashes in walked.items() if hashes}
        previous, self._previous = self._previous, current
        self._cleared -= {self.blocks.model_of(namespace) for namespace, _ in current}
        if self._snapshot_due:  # announced even if leadership was lost meanwhile: the clear went out
            self._snapshot_due = False
            previous = None
            if not self.is_leader():
                self._previous = None
        else:
            self._clear_emptied(current, previous)
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

    def _clear_emptied(
        self, current: dict[tuple[str, int], np.ndarray], previous: dict[tuple[str, int], np.ndarray] | None
    ) -> None:
        """AllBlocksCleared for each model that had blocks at the previous walk and has none now."""
        holding = {self.blocks.model_of(namespace) for namespace, _ in current}
        by_model: dict[str, set[str]] = {}
        for namespace, _ in previous or {}:
            by_model.setdefault(self.blocks.model_of(namespace), set()).add(namespace)
        for model in sorted(by_model.keys() - holding - self._cleared):
            self.blocks.cleared(model)
            self._cleared.add(model)
            self.clears += 1
            late = 0
            for namespace in sorted(by_model[model]):
                for (_, group), hashes in walk_namespace(self._root(), namespace).items():
                    for block_hash in hashes:
                        self.blocks.announce(namespace, block_hash, group)
                    late += len(hashes)
            if late:
                self._cleared.discard(model)
            log.info(
                "no block of model %r on the volume: announced AllBlocksCleared (%d files appeared since)",
                model,
                late,
            )

    def _root(self) -> Path:
        return self.blocks.root or Path()

    def _namespaces(self) -> set[str]:
        """Names of the namespaces with a directory (config or blocks) on the volume."""
        try:
            with os.scandir(self._root()) as entries:
                names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            return set()
        return {parsed[0] for name in names if (parsed := parse_namespace_dir(name)) is not None}


def _sorted(hashes: list[bytes]) -> np.ndarray:
    width = max(map(len, hashes))
    return np.unique(np.array(hashes, dtype=f"S{width}"))
