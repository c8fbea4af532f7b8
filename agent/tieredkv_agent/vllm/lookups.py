"""Lookups answered without a socket round trip on vLLM's scheduler thread.

vLLM asks a tier about one key at a time and expects an answer at once. Like vLLM's own `fs` tier (its
`AsyncLookupManager`), the plugin answers from what it already knows and otherwise says "not yet" (RETRY);
the keys asked in one scheduler step go to the agent as one batch per request when the step ends, on the
`tkv-plugin-lookup` thread, and the answers are there for the next step.

A key's verdict is kept while some request that asked for it is alive, so a request sees one answer per
key and a second request asking for the same key shares the probe. A failed load marks its keys missing
(`mark_miss`) so vLLM does not promise them again (the livelock vLLM fixed in its own tier). An agent
verdict of RETRY (the block is being written) is not kept: the key is probed again on the next ask.

Threads: vLLM's scheduler thread calls `lookup`, `flush`, `forget`, `mark_miss` and `close` (never two at
once); `tkv-plugin-lookup` runs `batch` calls. They share only the two queues.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Verdict = bool | None
"""True: the agent has the block; False: it has not; None: ask again later."""

BatchLookup = Callable[[Sequence[bytes], str], list[Verdict]]
"""Ask the agent about keys of one request (lookup thread); one verdict per key."""

_Probe = tuple[bytes, str, int]  # key, request id, generation


@dataclass(slots=True)
class _State:
    generation: int
    verdict: Verdict = None
    in_flight: bool = False
    requests: set[str] = field(default_factory=set)


class AsyncLookups:
    """Per-step batched lookups with verdicts kept per live request (see the module docstring)."""

    def __init__(self, batch: BatchLookup) -> None:
        self._batch = batch
        self._states: dict[bytes, _State] = {}
        self._by_request: dict[str, set[bytes]] = {}
        self._pending: list[_Probe] = []
        self._generation = 0
        self._to_worker: queue.SimpleQueue[list[_Probe] | None] = queue.SimpleQueue()
        self._answers: queue.SimpleQueue[list[tuple[bytes, int, Verdict]]] = queue.SimpleQueue()
        self.probes_sent = 0
        self._thread = threading.Thread(target=self._run, name="tkv-plugin-lookup", daemon=True)
        self._thread.start()

    def lookup(self, key: bytes, request_id: str) -> Verdict:
        """The verdict known for `key`, None if it is still to be asked (scheduler thread)."""
        self._apply_answers()
        state = self._states.get(key)
        if state is None:
            state = _State(self._generation)
            self._generation += 1
            self._states[key] = state
            self._pending.append((key, request_id, state.generation))
        state.requests.add(request_id)
        self._by_request.setdefault(request_id, set()).add(key)
        return state.verdict

    def flush(self) -> None:
        """Send this step's new keys to the lookup thread (scheduler thread, at the end of a step)."""
        self._apply_answers()
        batch, self._pending = self._pending, []
        probes = []
        for key, request_id, generation in batch:
            state = self._states.get(key)
            if state is not None and state.generation == generation:
                state.in_flight = True
                probes.append((key, request_id, generation))
        if probes:
            self.probes_sent += len(probes)
            self._to_worker.put(probes)

    def mark_miss(self, keys: Sequence[bytes]) -> None:
        """These keys failed to load: answer False for them from now on (scheduler thread)."""
        for key in keys:
            state = self._states.get(key)
            if state is not None:
                state.verdict, state.in_flight = False, False

    def forget(self, request_id: str) -> None:
        """The request finished: drop verdicts no live request needs (scheduler thread)."""
        for key in self._by_request.pop(request_id, ()):
            state = self._states.get(key)
            if state is None:
                continue
            state.requests.discard(request_id)
            if not state.requests and not state.in_flight:
                del self._states[key]

    def close(self) -> None:
        """Stop the lookup thread (scheduler thread, at shutdown)."""
        self._to_worker.put(None)
        self._thread.join(timeout=5.0)

    def _apply_answers(self) -> None:
        while True:
            try:
                answers = self._answers.get_nowait()
            except queue.Empty:
                return
            for key, generation, verdict in answers:
                state = self._states.get(key)
                if state is None or state.generation != generation or not state.in_flight:
                    continue
                state.in_flight = False
                if not state.requests or verdict is None:
                    del self._states[key]  # nobody waits, or the agent said "ask again"
                else:
                    state.verdict = verdict

    def _run(self) -> None:
        """Answer batches until `close` (the lookup thread)."""
        while (probes := self._to_worker.get()) is not None:
            by_request: dict[str, list[tuple[bytes, int]]] = {}
            for key, request_id, generation in probes:
                by_request.setdefault(request_id, []).append((key, generation))
            answers: list[tuple[bytes, int, Verdict]] = []
            for request_id, entries in by_request.items():
                keys = [key for key, _ in entries]
                try:
                    verdicts = self._batch(keys, request_id)
                except Exception:
                    log.exception("lookup of %d keys failed; answering MISS", len(keys))
                    verdicts = [False] * len(keys)
                answers.extend((key, gen, v) for (key, gen), v in zip(entries, verdicts, strict=True))
            self._answers.put(answers)
