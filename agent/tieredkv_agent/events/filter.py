"""Which changes a publisher sends: `spec.events.filter` on the cache, as the agents receive it.

Three independent restrictions, each "everything" when left empty (docs/events.md#filter):

* **kinds**: `BlockStored`, `BlockRemoved`, `AllBlocksCleared`. A router that only needs to hear about
  blocks that appear can drop removals (and must then accept a view that only grows);
* **models**: model names as vLLM serves them (the `<model>` of the topic `kv@<identity>@<model>`). ZMQ
  already filters by topic prefix per subscriber, but a filtered change is never queued, never kept in
  the replay ring and never announced by a snapshot, so a cache shared by many models keeps a small ring
  for the models that routers care about;
* **groups**: KV-cache group indexes (`group_idx`; a hybrid model's sliding-window groups are of no use to
  prefix matching). AllBlocksCleared has no group and passes this restriction.

Pure and immutable: `admits` is called by any producer thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tieredkv_agent.events.wire import topic_for

KINDS = ("BlockStored", "BlockRemoved", "AllBlocksCleared")
"""The event kinds a filter names (vLLM's class names)."""


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What a publisher sends; the default sends everything."""

    kinds: frozenset[str] = frozenset(KINDS)
    topics: frozenset[str] | None = None
    """Topics (one per admitted model) whose changes are sent; None: every topic."""
    groups: frozenset[int] | None = None
    """KV-cache groups whose block changes are sent; None: every group."""

    @classmethod
    def build(
        cls, identity: str, kinds: Iterable[str], models: Iterable[str], groups: Iterable[int]
    ) -> EventFilter:
        """The filter of a cache's `identity`; empty `models` or `groups` mean all (start-up thread)."""
        kind_set = frozenset(kinds)
        unknown = kind_set - set(KINDS)
        if unknown or not kind_set:
            raise ValueError(
                f"event kinds must be a non-empty subset of {', '.join(KINDS)}; got {sorted(kind_set)}"
            )
        model_list = list(models)
        group_set = frozenset(groups)
        return cls(
            kind_set,
            frozenset(topic_for(identity, m) for m in model_list) if model_list else None,
            group_set or None,
        )

    @property
    def everything(self) -> bool:
        return len(self.kinds) == len(KINDS) and self.topics is None and self.groups is None

    def admits(self, topic: str, kind: str, group_idx: int | None) -> bool:
        """True when a change of `kind` on `topic` for group `group_idx` (None: no group) is sent."""
        if kind not in self.kinds or (self.topics is not None and topic not in self.topics):
            return False
        return group_idx is None or self.groups is None or group_idx in self.groups

    def describe(self) -> str:
        """One line for the agent's start-up log."""
        if self.everything:
            return "every event"
        models = "every model" if self.topics is None else ", ".join(sorted(self.topics))
        groups = "every group" if self.groups is None else ", ".join(map(str, sorted(self.groups)))
        return f"{', '.join(k for k in KINDS if k in self.kinds)} of {models} in {groups}"
