"""Drive a secondary tier the way vLLM's `TieringOffloadingManager` does (reference §1.6).

Per scheduler step of a request: poll the tier's finished jobs once; look keys up in prefix order (the
primary first, then the tier; a tier HIT allocates a primary slot and queues a promotion; RETRY defers the
request to the next step; MISS ends the scan); at the end of the step submit one load job per request with
the promotions queued in it and call `on_schedule_end`. Blocks nobody had are "computed" (written into
fresh primary slots) and, once complete, cascaded to the tier as one store job. A finished request gets
`on_request_finished`; `reset` drains. Job results are checked as vLLM checks them: an unknown or repeated
job id is an AssertionError. One thread (the engine's) runs everything here.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tieredkv_agent.standin.primary import Primary
from tieredkv_agent.standin.region import SharedRegion

Content = Callable[[bytes], bytes]


@dataclass
class ReqContext:
    req_id: str
    kv_transfer_params: dict[str, Any] | None = None


@dataclass
class TransferJob:
    """vLLM 0.33's job shape (`chunk_ids`)."""

    job_id: int
    keys: list[bytes]
    chunk_ids: np.ndarray
    is_promotion: bool
    req_context: ReqContext
    submit_time: float = field(default_factory=time.monotonic)


@dataclass
class LegacyJob:
    """The job shape of vLLM before 0.33 (`block_ids`)."""

    job_id: int
    keys: list[bytes]
    block_ids: np.ndarray
    is_promotion: bool
    req_context: ReqContext


@dataclass
class Outcome:
    """What happened to one request."""

    req_id: str
    blocks: int
    loaded: int = 0
    computed: int = 0
    stored: int = 0
    failed_loads: int = 0
    failed_stores: int = 0
    steps: int = 0
    mismatched: list[bytes] = field(default_factory=list)


def answer_name(answer: Any) -> str:
    """ "HIT", "MISS" or "RETRY" from a LookupResult (vLLM's or a stand-in) or a legacy bool/None."""
    name = getattr(answer, "name", None)
    return str(name) if name is not None else {True: "HIT", False: "MISS", None: "RETRY"}[answer]


class Driver:
    """One engine's scheduler side: a primary tier over `region`, and one secondary tier."""

    def __init__(
        self,
        tier: Any,
        region: SharedRegion,
        content: Content,
        *,
        legacy_jobs: bool = False,
        step_s: float = 0.002,
    ) -> None:
        self.tier = tier
        self.region = region
        self.content = content
        self.primary = Primary(region.num_chunks)
        self.legacy_jobs = legacy_jobs
        self.step_s = step_s
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, list[bytes], bool]] = {}
        self._settled: dict[str, list[tuple[list[bytes], bool, list[bytes]]]] = {}
        self._computed: dict[str, int] = {}

    def _job(self, keys: list[bytes], slots: list[int], load: bool, ctx: ReqContext) -> Any:
        ids = np.asarray(slots, dtype=np.int64)
        job_id = next(self._ids)
        self._pending[job_id] = (ctx.req_id, keys, load)
        if self.legacy_jobs:
            return LegacyJob(job_id, keys, ids, load, ctx)
        return TransferJob(job_id, keys, ids, load, ctx)

    def poll(self) -> None:
        """Take the tier's finished jobs; settle the primary as vLLM does (once per step)."""
        for result in self.tier.get_finished_jobs():
            assert result.job_id in self._pending, f"unknown or repeated job id {result.job_id}"
            req_id, keys, load = self._pending.pop(result.job_id)
            partial = list(result.successful_keys or []) if load else []  # loads say which keys made it
            good = keys if result.success else partial
            if load:
                kept = set(good)
                self.primary.complete_write(good, True)
                self.primary.complete_write([k for k in keys if k not in kept], False)
            else:
                self.primary.complete_read(keys)
            self._settled.setdefault(req_id, []).append((keys, load, list(good)))

    def run_request(self, req_id: str, keys: Sequence[bytes], timeout_s: float = 30.0) -> Outcome:
        """Serve one request of `keys` chunks to the end (stores settled); returns what happened."""
        ctx = ReqContext(req_id)
        outcome = Outcome(req_id, len(keys))
        self.tier.on_new_request(ctx)
        deadline = time.monotonic() + timeout_s
        while True:
            outcome.steps += 1
            self.poll()
            defer = self._scan(keys, ctx)
            self.tier.on_schedule_end(None)
            if not defer and not self._in_flight(req_id, load=True):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"request {req_id} still waiting after {timeout_s} s")
            time.sleep(self.step_s)
        self._compute_and_cascade(keys, ctx)
        while self._in_flight(req_id, load=False):
            if time.monotonic() > deadline:
                raise TimeoutError(f"stores of request {req_id} still running after {timeout_s} s")
            time.sleep(self.step_s)
            outcome.steps += 1
            self.poll()
        self.tier.on_request_finished(ctx)
        self._account(outcome, keys)
        return outcome

    def _scan(self, keys: Sequence[bytes], ctx: ReqContext) -> bool:
        """One step's lookups and promotions; True if the request must wait for a later step."""
        promote: list[bytes] = []
        slots: list[int] = []
        wait = False
        for key in keys:
            state = self.primary.state(key)
            if state == "ready":
                continue
            if state == "pending":
                wait = True
                break
            answer = answer_name(self.tier.lookup(key, ctx))
            if answer == "RETRY":
                wait = True
                break
            allocated = self.primary.prepare_write([key]) if answer == "HIT" else None
            if allocated is None:
                break
            promote.append(key)
            slots.extend(allocated)
        if promote:
            self.tier.submit_load(self._job(promote, slots, True, ctx))
            wait = True
        return wait

    def _in_flight(self, req_id: str, *, load: bool) -> bool:
        return any(r == req_id and kind is load for r, _, kind in self._pending.values())

    def _compute_and_cascade(self, keys: Sequence[bytes], ctx: ReqContext) -> None:
        """Write the missing blocks (the 'GPU' computed them), then store them to the tier."""
        missing = [key for key in keys if self.primary.state(key) is None]
        slots = self.primary.prepare_write(missing) if missing else []
        if not missing or slots is None:
            return
        for key, slot in zip(missing, slots, strict=True):
            self.region.write(slot, self.content(key))
        self.primary.complete_write(missing, True)
        self._computed[ctx.req_id] = len(missing)
        pinned = self.primary.prepare_read(missing)
        self.tier.submit_store(self._job(list(missing), pinned, False, ctx))

    def _account(self, outcome: Outcome, keys: Sequence[bytes]) -> None:
        outcome.computed = self._computed.pop(outcome.req_id, 0)
        for job_keys, load, good in self._settled.pop(outcome.req_id, []):
            if load:
                outcome.loaded += len(good)
                outcome.failed_loads += len(job_keys) - len(good)
            else:
                outcome.stored += len(good)
                outcome.failed_stores += len(job_keys) - len(good)
        for key in keys:
            if self.primary.state(key) == "ready":
                slot = self.primary.slot(key)
                if self.region.read(slot) != self.content(key):
                    outcome.mismatched.append(key)

    def reset(self) -> None:
        """vLLM's reset_cache: drain the tier, take its results (the engine thread)."""
        self.tier.drain_jobs()
        self.poll()
        assert not self._pending, f"jobs still unreported after drain: {sorted(self._pending)}"
