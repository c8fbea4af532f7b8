"""A CPU primary tier with vLLM's slot rules, for the stand-in engine (reference §1.7).

Per slot a reference count: -1 = being written (not readable), 0 = ready and evictable, >0 = pinned by
readers (a store job to a secondary tier). Allocation evicts the least recently used ready slot; when
none is free it fails (vLLM then skips the store or answers MISS). One thread (the engine's) uses it.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence


class Primary:
    """Slots of the shared region, keyed by offload key."""

    def __init__(self, num_chunks: int) -> None:
        self._free = list(range(num_chunks - 1, -1, -1))
        self._slots: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        self._refs: dict[bytes, int] = {}

    def state(self, key: bytes) -> str | None:
        """ "ready", "pending" (being written) or None (absent)."""
        if key not in self._slots:
            return None
        self._slots.move_to_end(key)
        return "pending" if self._refs[key] < 0 else "ready"

    def slot(self, key: bytes) -> int:
        return self._slots[key]

    def prepare_write(self, keys: Sequence[bytes]) -> list[int] | None:
        """Allocate a slot per key (ref -1), evicting LRU ready slots; None if they do not fit."""
        evictable = [k for k, _ in self._slots.items() if self._refs[k] == 0 and k not in keys]
        if len(self._free) + len(evictable) < len(keys):
            return None
        for victim in evictable[: max(0, len(keys) - len(self._free))]:
            self._free.append(self._slots.pop(victim))
            del self._refs[victim]
        slots = []
        for key in keys:
            slot = self._free.pop()
            self._slots[key] = slot
            self._refs[key] = -1
            slots.append(slot)
        return slots

    def complete_write(self, keys: Sequence[bytes], success: bool) -> None:
        for key in keys:
            if success:
                self._refs[key] = 0
            else:
                self._free.append(self._slots.pop(key))
                del self._refs[key]

    def prepare_read(self, keys: Sequence[bytes]) -> list[int]:
        """Pin ready slots for a store job to a secondary tier."""
        for key in keys:
            if self._refs.get(key, -1) < 0:
                raise ValueError("only ready slots can be pinned")
            self._refs[key] += 1
        return [self._slots[key] for key in keys]

    def complete_read(self, keys: Sequence[bytes]) -> None:
        for key in keys:
            self._refs[key] -= 1
