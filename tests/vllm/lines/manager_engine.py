"""vLLM's own `TieringOffloadingManager`, built and driven the way vLLM's offloading connector does it.

Everything vLLM-side here is the line's unmodified code (its `OffloadingSpecFactory`, `TieringOffloadingSpec`,
`SecondaryTierFactory`, primary tier, shared region, `init_none_hash`, `hash_block_tokens`); the only part
played by this module is the one a GPU worker plays: it writes a block's bytes into the primary slot vLLM
hands out for a store, and reads back the slot it hands out for a load. The start-up order is vLLM's: the
manager (and with it the tieredkv tier) is built before `init_none_hash` runs.

No stubs are needed on the lines tested (0.32.0, 0.33.0, 0.34.0): the scheduler-side modules import on
CPU from the wheel's sources. Called from the test's thread only.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from vllm.utils.hashing import get_hash_fn_by_name
from vllm.v1.core import kv_cache_utils
from vllm.v1.kv_offload import base as kv_base
from vllm.v1.kv_offload import config as kv_config
from vllm.v1.kv_offload.factory import OffloadingSpecFactory

TOKENS_PER_BLOCK = 32
LAYERS = ("model.layers.0.self_attn.attn", "model.layers.1.self_attn.attn")


def offloading_config(extra_config: dict[str, Any], engine_id: str, block_bytes: int) -> Any:
    """vLLM's normalised offloading config for a one-group, single-worker engine."""
    parallel = kv_config.OffloadingParallelConfig(
        rank=0,
        world_size=1,
        tp_size=1,
        pp_size=1,
        pcp_size=1,
        dcp_size=1,
        data_parallel_index=0,
        data_parallel_size=1,
        data_parallel_rank_local=None,
        is_parallelism_agnostic=True,
    )
    return kv_config.OffloadingConfig(
        groups=(
            kv_config.OffloadingGroupConfig(
                tokens_per_block=TOKENS_PER_BLOCK, layer_names=LAYERS, group_id=0
            ),
        ),
        worker_kv_bytes_per_block=block_bytes,
        enable_kv_cache_events=False,
        extra_config=extra_config,
        engine_id=engine_id,
        model=kv_config.OffloadingModelConfig(name="tieredkv/tiny-llama", dtype="float32"),
        cache=kv_config.OffloadingCacheConfig(tokens_per_hash=TOKENS_PER_BLOCK, blocks_per_chunk=1),
        parallel=parallel,
    )


def block_bytes_for(key: bytes, size: int) -> bytes:
    """What the 'GPU' holds for a block: a pattern derived from its key, so any mix-up shows."""
    return (key * (size // len(key) + 1))[:size]


@dataclass
class Outcome:
    """One request as the engine saw it."""

    hits: int = 0
    computed: int = 0
    stored: int = 0
    mismatched: list[int] = field(default_factory=list)
    steps: int = 0


class ManagerEngine:
    """One engine's scheduler side: vLLM's manager with the kv-transfer-config the operator rendered."""

    def __init__(
        self, kv_transfer_config: str, engine_id: str, *, chunks: int = 64, block: int = 65536
    ) -> None:
        extra = dict(json.loads(kv_transfer_config)["kv_connector_extra_config"])
        extra["cpu_bytes_to_use"] = chunks * block
        self.block = block
        self.spec = OffloadingSpecFactory.create_spec(offloading_config(extra, engine_id, block))
        self.manager = self.spec.get_manager()  # builds the tiers: before NONE_HASH exists, as in EngineCore
        self.tier = self.manager.secondary_tiers[0]
        self.view = self.manager.primary_tier.get_kv_memoryview()
        self._hash = get_hash_fn_by_name("sha256")

    def seed_hashes(self) -> None:
        """What EngineCore does after building the scheduler: `init_none_hash`."""
        kv_cache_utils.init_none_hash(self._hash)

    def lock(self) -> Any:
        """The manager's lock (0.33 on; 0.32's manager is entered from one thread and has none)."""
        lock = getattr(self.manager, "lock", None)
        return lock if lock is not None else contextlib.nullcontext()

    def wait_connected(self, timeout_s: float = 10.0) -> None:
        """Wait until the tier's link has sent its Hello and been accepted (tests only)."""
        deadline = time.monotonic() + timeout_s
        while self.tier.link.client() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the tier never connected: {self.tier.link.last_error}")
            time.sleep(0.01)

    def keys(self, tokens: list[int]) -> list[bytes]:
        """The request's offload keys, from vLLM's own block hashing (one group, one block per chunk)."""
        keys, parent = [], None
        for start in range(0, len(tokens) - TOKENS_PER_BLOCK + 1, TOKENS_PER_BLOCK):
            chunk = tokens[start : start + TOKENS_PER_BLOCK]
            parent = kv_cache_utils.hash_block_tokens(self._hash, parent, chunk)
            keys.append(kv_base.make_offload_key(bytes(parent), 0))
        return keys

    def step(self, new: tuple[str, ...] = ()) -> None:
        """End one scheduler step (the connector's `on_schedule_end`)."""
        with self.lock():
            self.manager.on_schedule_end(kv_base.ScheduleEndContext(new_req_ids=new, preempted_req_ids=()))

    def run_request(self, req_id: str, tokens: list[int], *, max_steps: int = 400) -> Outcome:
        """Look up, load the hit prefix, compute and store the rest, finish; step until all is settled."""
        outcome = Outcome()
        context = kv_base.ReqContext(req_id=req_id)
        keys = self.keys(tokens)
        with self.lock():
            self.manager.on_new_request(context)
        hits = self._resolve_hits(keys, context, outcome, max_steps)
        with self.lock():
            if hits:
                spec = self.manager.prepare_load(keys[:hits], context)
                for index, (key, slot) in enumerate(zip(keys[:hits], spec.block_ids, strict=True)):
                    if bytes(self._slot(int(slot))) != block_bytes_for(key, self.block):
                        outcome.mismatched.append(index)
                self.manager.complete_load(keys[:hits], context)
            rest = keys[hits:]
            prepared = self.manager.prepare_store(rest, context) if rest else None
            if prepared is not None:
                for key, slot in zip(prepared.keys_to_store, prepared.store_spec.block_ids, strict=True):
                    self._slot(int(slot))[:] = block_bytes_for(key, self.block)
                self.manager.complete_store(prepared.keys_to_store, context)
                outcome.stored = len(prepared.keys_to_store)
        outcome.hits, outcome.computed = hits, len(rest)
        self.step()
        with self.lock():
            self.manager.on_request_finished(context)
        self.settle(max_steps)
        return outcome

    def _resolve_hits(self, keys: list[bytes], context: Any, outcome: Outcome, max_steps: int) -> int:
        """Ask until every key is HIT or the first MISS, stepping while vLLM says RETRY / HIT_PENDING."""
        result = kv_base.LookupResult
        for _ in range(max_steps):
            outcome.steps += 1
            hits, verdict = 0, result.HIT
            with self.lock():
                for key in keys:
                    verdict = self.manager.lookup(key, context)
                    if verdict is not result.HIT:
                        break
                    hits += 1
            if verdict in (result.HIT, result.MISS):
                return hits
            self.step((context.req_id,) if outcome.steps == 1 else ())
            time.sleep(0.002)
        raise AssertionError(f"lookups of {context.req_id} never settled (last: {verdict})")

    def settle(self, max_steps: int = 2000) -> None:
        """Step until the manager has no pending work (stores cascaded, jobs reported)."""
        for _ in range(max_steps):
            with self.lock():
                pending = self.manager.has_pending_work()
            if not pending:
                return
            self.step()
            time.sleep(0.002)
        raise AssertionError("the manager kept pending work")

    def _slot(self, slot: int) -> memoryview:
        flat = self.view.cast("B") if self.view.ndim != 1 or self.view.format != "B" else self.view
        return flat[slot * self.block : (slot + 1) * self.block]

    def shutdown(self) -> None:
        self.manager.shutdown()
