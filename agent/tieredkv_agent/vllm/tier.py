"""`TieredKVTier`: vLLM's secondary tier that hands block I/O to the tieredkv node agent.

vLLM builds it from the `secondary_tiers` entry the operator renders::

    {"type": "TieredKVTier", "module_path": "tieredkv_agent.vllm",
     "socket_path": "/var/run/tieredkv/<ns>.<cache>/agent.sock", "cache_namespace": ..., "cache_name": ...}

(or `"type": "tieredkv"` through the `vllm.general_plugins` entry point on releases without
`module_path`). Every other key of the entry is a constructor keyword, as vLLM's factory passes them.

Threads. vLLM calls every method from its scheduler process, under its tiering lock, so never two at
once but not always from the same thread; none of them waits for I/O. Behind them run the `AgentLink`
(`tkv-plugin-connect`) and the `AgentClient` reader (`tkv-api-client`).

Failure behaviour: if the agent is down or restarts, lookups answer MISS, jobs in flight are reported
failed exactly once, jobs submitted meanwhile fail at once, and the link reconnects with backoff. A
profile that cannot be determined, or a region the agent could not map, fails the constructor: vLLM
then refuses to start, naming the reason, rather than running with a tier that silently does nothing.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any, ClassVar

from tieredkv_agent.api.client import AgentClient
from tieredkv_agent.api.protocol import LookupCode
from tieredkv_agent.vllm import compat
from tieredkv_agent.vllm.link import AgentLink
from tieredkv_agent.vllm.profile import identify
from tieredkv_agent.vllm.region import backing_file, open_region

log = logging.getLogger(__name__)

_CODES = {LookupCode.HIT: "HIT", LookupCode.MISS: "MISS", LookupCode.RETRY: "RETRY"}


class TieredKVTier(compat.BASE):  # type: ignore[misc]  # vLLM's base when installed (typed Any)
    """A secondary tier whose storage is the node agent (see the module docstring)."""

    medium: ClassVar[Any] = compat.MEDIUM_STORAGE
    tolerates_off_thread_polling: ClassVar[bool] = False

    def __init__(
        self,
        offloading_spec: Any,
        primary_kv_view: memoryview,
        tier_type: str,
        *,
        socket_path: str,
        cache_namespace: str = "",
        cache_name: str = "",
        connect_timeout_s: float = 5.0,
        startup_wait_s: float = 2.0,
        drain_timeout_s: float = 300.0,
        backpressure_detector: Any = None,
    ) -> None:
        """Identify the engine, find its region file and start connecting (vLLM's scheduler thread)."""
        super().__init__(
            offloading_spec=offloading_spec,
            primary_kv_view=primary_kv_view,
            tier_type=tier_type,
            **compat.base_init_kwargs(backpressure_detector),
        )
        self.cache = f"{cache_namespace}/{cache_name}"
        self.drain_timeout_s = drain_timeout_s
        backing = backing_file(primary_kv_view)
        self.identity = identify(offloading_spec, backing.block_bytes)
        self.namespace = self.identity.profile.namespace
        self.instance_id = f"{os.environ.get('HOSTNAME', 'engine')}/{os.getpid()}-{uuid.uuid4().hex[:6]}"[
            :128
        ]
        self._jobs: dict[int, tuple[tuple[bytes, ...], bool, float]] = {}
        self._verdicts: dict[str, dict[bytes, Any]] = {}
        self._failed: list[int] = []

        def connect() -> AgentClient:
            fd, size = open_region(backing)
            try:
                return AgentClient(
                    socket_path,
                    instance_id=self.instance_id,
                    vllm_version=self.identity.vllm_version,
                    profile=self.identity.profile,
                    region_fd=fd,
                    region_bytes=size,
                    timeout_s=connect_timeout_s,
                )
            finally:
                os.close(fd)

        self.link = AgentLink(connect)
        connected = self.link.start(wait_s=startup_wait_s)
        log.info(
            "tieredkv tier for cache %s: namespace %s, region %s, agent %s",
            self.cache,
            self.namespace,
            backing.path,
            "connected" if connected else f"not reachable yet ({self.link.last_error})",
        )

    # -- lookups ------------------------------------------------------------------------------------

    def lookup(self, key: bytes, req_context: Any) -> Any:
        """HIT / MISS / RETRY for one key; a verdict is remembered for the request (scheduler thread)."""
        rid = compat.request_id(req_context) or ""
        remembered = self._verdicts.get(rid, {}).get(bytes(key))
        if remembered is not None:
            return remembered
        client = self.link.client()
        code = LookupCode.MISS
        if client is not None:
            code = client.lookup(self.namespace, [bytes(key)], vllm_request_id=rid or None)[0]
        answer = compat.lookup_answer(_CODES[code])
        if code is not LookupCode.RETRY:
            self._verdicts.setdefault(rid, {})[bytes(key)] = answer
        return answer

    def on_new_request(self, req_context: Any) -> Any:
        """Block-level offloading, vLLM's default (scheduler thread)."""
        parent = getattr(super(), "on_new_request", None)
        return parent(req_context) if parent is not None else None

    def on_request_finished(self, req_context: Any) -> None:
        """Forget the request's remembered verdicts (scheduler thread)."""
        self._verdicts.pop(compat.request_id(req_context) or "", None)

    def on_schedule_end(self, context: Any) -> None:
        """Nothing is batched per step: lookups are answered at once (scheduler thread)."""

    # -- jobs ---------------------------------------------------------------------------------------

    def submit_store(self, job_metadata: Any) -> None:
        """Send a store of `chunk_ids` (or `block_ids`) slots to the agent; never waits."""
        self._submit(job_metadata, load=False)

    def submit_load(self, job_metadata: Any) -> None:
        """Send a load into `chunk_ids` (or `block_ids`) slots; never waits."""
        self._submit(job_metadata, load=True)

    def _submit(self, job: Any, *, load: bool) -> None:
        job_id = int(job.job_id)
        keys = tuple(bytes(key) for key in job.keys)
        slots = compat.job_slots(job)
        self._jobs[job_id] = (keys, load, time.monotonic())
        client = self.link.client()
        if client is None:
            self._failed.append(job_id)
            return
        send = client.submit_load if load else client.submit_store
        send(job_id, self.namespace, keys, slots)

    def get_finished_jobs(self) -> list[Any]:
        """Every job finished since the last call, each exactly once (scheduler thread)."""
        results = []
        failed, self._failed = self._failed, []
        for job_id in failed:
            results.append(self._result(job_id, [False] * len(self._jobs[job_id][0]), 0))
        for done in self.link.poll():
            if done.job_id in self._jobs:
                flags = done.flags(len(self._jobs[done.job_id][0]))
                results.append(self._result(done.job_id, flags, done.transfer_bytes))
        return results

    get_finished = get_finished_jobs  # the name before vLLM #43870

    def _result(self, job_id: int, flags: list[bool], transfer_bytes: int) -> Any:
        keys, load, started = self._jobs.pop(job_id)
        success = all(flags)
        if load and not success:
            for verdicts in self._verdicts.values():  # a failed load must not be promised again
                for key, ok in zip(keys, flags, strict=True):
                    if not ok:
                        verdicts.pop(key, None)
        return compat.make_job_result(
            job_id,
            success,
            successful_keys=[key for key, ok in zip(keys, flags, strict=True) if ok] if load else None,
            transfer_time=time.monotonic() - started,
            transfer_bytes=transfer_bytes,
        )

    def has_pending_work(self) -> bool:
        return bool(self._jobs)

    def drain_jobs(self) -> None:
        """Wait until the agent reported every job sent so far (vLLM's reset_cache, scheduler thread)."""
        client = self.link.client()
        if client is not None and not client.drain(self.drain_timeout_s):
            log.error("the agent did not drain within %.0f s; closing the connection", self.drain_timeout_s)
            client.close()

    def shutdown(self) -> None:
        """Close the connection; unreported jobs are reported failed by the next poll (scheduler thread)."""
        self.link.close()
