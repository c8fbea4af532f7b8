"""`TieredKVTier`: vLLM's secondary tier that hands block I/O to the tieredkv node agent.

vLLM builds it from the `secondary_tiers` entry the operator renders::

    {"type": "TieredKVTier", "module_path": "tieredkv_agent.vllm",
     "socket_path": "/var/run/tieredkv/<ns>.<cache>/agent.sock", "cache_namespace": ..., "cache_name": ...}

(or `"type": "tieredkv"` through the `vllm.general_plugins` entry point on releases without
`module_path`). Every other key of the entry is a constructor keyword, as vLLM's factory passes them.

Start-up. vLLM builds its tiers before it seeds its block hashes, so the constructor only describes the
engine (namespace, run config, region) and starts the link; the link sends the Hello once vLLM's
NONE_HASH exists, in the background. Nothing here waits for the agent: until it answers, lookups say
MISS and jobs fail at once.

Threads. vLLM calls every method from its scheduler process under its tiering lock, so never two at once,
but not always from the same thread; none of them waits for I/O or for the agent. Behind them run the
`AgentLink` (`tkv-plugin-connect`), the `AgentClient` reader (`tkv-api-client`) and the batched lookups
(`tkv-plugin-lookup`).

Failure behaviour: if the agent goes, jobs in flight are reported failed exactly once and the link
reconnects with backoff. The agent may still be finishing I/O for jobs whose connection was cut, so their
region slots must not be reused at once: a failed load hands vLLM a `deferred_release` event set after
`release_grace_s` (vLLM 0.34 on); on older releases, and for stores, the failure itself is reported only
then. A region the plugin cannot identify fails the constructor: vLLM then refuses to start, naming the
reason, rather than running with a tier that silently does nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

from tieredkv_agent.api.client import AgentClient
from tieredkv_agent.api.protocol import JobDone, LookupCode
from tieredkv_agent.vllm import compat
from tieredkv_agent.vllm.link import AgentLink, NotReady
from tieredkv_agent.vllm.lookups import AsyncLookups, Verdict
from tieredkv_agent.vllm.profile import describe
from tieredkv_agent.vllm.region import backing_file, open_region

log = logging.getLogger(__name__)

_VERDICTS: dict[LookupCode, Verdict] = {LookupCode.HIT: True, LookupCode.MISS: False, LookupCode.RETRY: None}


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
        startup_wait_s: float = 0.0,
        drain_timeout_s: float = 300.0,
        release_grace_s: float = 10.0,
        backpressure_detector: Any = None,
    ) -> None:
        """Describe the engine, find its region file and start linking (vLLM's scheduler thread).

        `startup_wait_s` > 0 waits that long for a first connection (tests); vLLM's default never waits.
        """
        super().__init__(
            offloading_spec=offloading_spec,
            primary_kv_view=primary_kv_view,
            tier_type=tier_type,
            **compat.base_init_kwargs(backpressure_detector),
        )
        self.cache = f"{cache_namespace}/{cache_name}"
        self.drain_timeout_s = drain_timeout_s
        self.release_grace_s = release_grace_s
        backing = backing_file(primary_kv_view)
        self.engine = describe(offloading_spec, backing.block_bytes)
        self.namespace = self.engine.namespace
        self.instance_id = f"{os.environ.get('HOSTNAME', 'engine')}/{os.getpid()}-{uuid.uuid4().hex[:6]}"[
            :128
        ]
        self._jobs: dict[int, tuple[tuple[bytes, ...], bool, float]] = {}
        self._failed: list[int] = []
        self._held: list[tuple[float, Any]] = []  # (release time, JobResult) of cut-off jobs
        self._releases: list[tuple[float, threading.Event]] = []
        self.lookups = AsyncLookups(self._batch_lookup)

        def connect() -> AgentClient:
            identity = self.engine.identity()
            if identity is None:
                raise NotReady
            fd, size = open_region(backing)
            try:
                return AgentClient(
                    socket_path,
                    instance_id=self.instance_id,
                    vllm_version=identity.vllm_version,
                    profile=identity.profile,
                    region_fd=fd,
                    region_bytes=size,
                    timeout_s=connect_timeout_s,
                    run_config=identity.run_config,
                )
            finally:
                os.close(fd)

        self.link = AgentLink(connect)
        self.link.start(wait_s=startup_wait_s)
        log.info(
            "tieredkv tier for cache %s: namespace %s, region %s, agent socket %s",
            self.cache,
            self.namespace,
            backing.path,
            socket_path,
        )

    # -- lookups ------------------------------------------------------------------------------------

    def lookup(self, key: bytes, req_context: Any) -> Any:
        """HIT / MISS from what is known, RETRY while the key waits for the step's batch (scheduler)."""
        verdict = self.lookups.lookup(bytes(key), compat.request_id(req_context) or "")
        return compat.lookup_answer({True: "HIT", False: "MISS", None: "RETRY"}[verdict])

    def _batch_lookup(self, keys: Sequence[bytes], request_id: str) -> list[Verdict]:
        """Ask the agent about one request's keys (the lookup thread); all MISS without an agent."""
        client = self.link.client()
        if client is None:
            return [False] * len(keys)
        limit = client.hello_ok.max_keys
        verdicts: list[Verdict] = []
        for start in range(0, len(keys), limit):
            part = keys[start : start + limit]
            codes = client.lookup(self.namespace, part, vllm_request_id=request_id or None)
            verdicts.extend(_VERDICTS[code] for code in codes)
        return verdicts

    def on_new_request(self, req_context: Any) -> Any:
        """vLLM's default request context: chunk-level offloading (scheduler thread)."""
        return compat.request_context()

    def on_request_finished(self, req_context: Any) -> None:
        """Forget the request's lookup verdicts (scheduler thread)."""
        self.lookups.forget(compat.request_id(req_context) or "")

    def on_schedule_end(self, context: Any) -> None:
        """Send the step's lookups to the agent as one batch per request (scheduler thread)."""
        self.lookups.flush()

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
        now = time.monotonic()
        results = [self._result(job_id, [False] * len(self._jobs[job_id][0]), 0) for job_id in self._failed]
        self._failed = []
        done = self.link.poll()
        cut_off = self.link.take_cut_off()
        for message in done:
            if message.job_id in self._jobs:
                results.extend(self._finish(message, message.job_id in cut_off, now))
        results.extend(result for due, result in self._held if due <= now)
        self._held = [(due, result) for due, result in self._held if due > now]
        self._set_releases(now)
        return results

    get_finished = get_finished_jobs  # the name before vLLM #43870

    def _finish(self, done: JobDone, cut_off: bool, now: float) -> list[Any]:
        """The JobResult of one JobDone, or none yet when it must be held back (scheduler thread)."""
        load = self._jobs[done.job_id][1]
        flags = done.flags(len(self._jobs[done.job_id][0]))
        if not cut_off or done.success:
            return [self._result(done.job_id, flags, done.transfer_bytes)]
        if load and compat.supports_deferred_release():
            event = threading.Event()
            self._releases.append((now + self.release_grace_s, event))
            return [self._result(done.job_id, flags, done.transfer_bytes, deferred_release=event)]
        self._held.append((now + self.release_grace_s, self._result(done.job_id, flags, done.transfer_bytes)))
        return []

    def _result(
        self, job_id: int, flags: list[bool], transfer_bytes: int, deferred_release: Any = None
    ) -> Any:
        keys, load, started = self._jobs.pop(job_id)
        success = all(flags)
        if load and not success:  # a failed load must not be promised again
            self.lookups.mark_miss([key for key, ok in zip(keys, flags, strict=True) if not ok])
        return compat.make_job_result(
            job_id,
            success,
            successful_keys=[key for key, ok in zip(keys, flags, strict=True) if ok] if load else None,
            transfer_time=time.monotonic() - started,
            transfer_bytes=transfer_bytes,
            deferred_release=deferred_release,
        )

    def _set_releases(self, now: float) -> None:
        for due, event in self._releases:
            if due <= now:
                event.set()
        self._releases = [(due, event) for due, event in self._releases if not event.is_set()]

    def has_pending_work(self) -> bool:
        """True while jobs, held results or deferred releases are outstanding (scheduler thread)."""
        return bool(self._jobs or self._held or self._releases)

    def drain_jobs(self) -> None:
        """Wait until the agent reported every job sent so far and no slot is still held (scheduler thread).

        Bounded by `drain_timeout_s` for the agent, then by `release_grace_s` for cut-off jobs.
        """
        client = self.link.client()
        if client is not None and not client.drain(self.drain_timeout_s):
            log.error("the agent did not drain within %.0f s; closing the connection", self.drain_timeout_s)
            client.close()
        latest = max([due for due, _ in self._held] + [due for due, _ in self._releases], default=0.0)
        if self._held or self._releases:
            time.sleep(max(0.0, latest - time.monotonic()))
            self._set_releases(float("inf"))

    def shutdown(self) -> None:
        """Close the connection and the lookup thread; every deferred release is set (scheduler thread)."""
        self.lookups.close()
        self.link.close()
        self._set_releases(float("inf"))
