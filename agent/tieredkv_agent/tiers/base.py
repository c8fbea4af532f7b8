"""The interface every agent tier implements: the shared-volume file tier now, a node RAM tier later.

Which thread calls what, for every tier:

* the constructor and `shutdown`: the agent's main thread;
* `lookup`, `submit_store`, `submit_load`: connection threads of the socket server, several at once.
  None of them may wait for I/O: lookups answer from memory (RETRY when they cannot yet), submissions
  queue work and return;
* completion sinks: the tier's own threads, exactly once per submitted job
  (see `tieredkv_agent.engine.jobs` for the details);
* `drain` and `stats`: control threads (reset, metrics).
"""

from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

from tieredkv_agent.engine.index import LookupResult
from tieredkv_agent.engine.jobs import BlockJob, CompletionSink
from tieredkv_agent.store.naming import Namespace


@runtime_checkable
class Tier(Protocol):
    """A place blocks can be stored in and loaded from, shared by all submitters on the node."""

    tier_type: ClassVar[str]
    """The registry name of the implementation (`"file"`, ...)."""

    def lookup(
        self, namespace: Namespace, keys: Sequence[bytes], request_id: str | None = None
    ) -> list[LookupResult]:
        """HIT / MISS / RETRY per key, in order (connection threads; never waits for I/O).

        `request_id` names the request asking; tiers with a reuse filter count a key once per request.
        RETRY means "not known yet, ask again later".
        """
        ...

    def submit_store(self, job: BlockJob, on_done: CompletionSink) -> None:
        """Queue copies of the job's source views into the tier (connection threads; never waits).

        `on_done` gets the `JobResult` exactly once, possibly before this returns (all keys already
        present, refused, or the tier is shut down). Raises ValueError for malformed jobs only, and
        then reports nothing.
        """
        ...

    def submit_load(self, job: BlockJob, on_done: CompletionSink) -> None:
        """Queue copies from the tier into the job's destination views; as `submit_store` otherwise."""
        ...

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every submitted job was reported; False on timeout (control thread)."""
        ...

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Fail queued work, wait a bounded time for running I/O, stop the threads (main thread).

        Every job is reported before this returns; later submissions are reported CANCELLED.
        """
        ...
