"""One connection's protocol state on the agent side: what is allowed when, and the per-connection limits.

Pure: no sockets, no I/O. The connection's reader thread passes each decoded message to `receive`, which
answers with a `Verdict`: accepted or not, and the reply to send right away, if any. Whoever sends a
JobDone calls `finish` for its job (the connection's writer thread, usually), which may add a Drained.
Both take the session's lock, so those two threads may call them concurrently.

States::

    AWAIT_HELLO --Hello ok--> READY --Drain, jobs in flight--> DRAINING --last finish--> READY
         |                      |                                  |
         +-------Goodbye--------+-------------Goodbye--------------+--> CLOSED (everything refused)

    allowed:  AWAIT_HELLO: Hello, Goodbye    READY: Lookup, Store, Load, Drain, Goodbye
              DRAINING:    Lookup, Goodbye   CLOSED: nothing

A refused Hello (version, region, profile) leaves the session in AWAIT_HELLO: the plugin may try again.
The helpers at the bottom convert the engine's results into protocol messages.
"""

import enum
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tieredkv_agent.api.protocol import (
    KEY_BYTES,
    MAX_FRAME_BYTES,
    MAX_INFLIGHT_JOBS,
    MAX_KEYS,
    SUPPORTED_VERSIONS,
    ClientMessage,
    Drain,
    Drained,
    ErrorCode,
    Goodbye,
    Hello,
    HelloOk,
    JobDone,
    Load,
    Lookup,
    LookupCode,
    LookupReply,
    ProtocolError,
    ServerMessage,
    Store,
    unsupported_version,
)
from tieredkv_agent.engine.index import LookupResult
from tieredkv_agent.engine.jobs import JobResult, KeyStatus
from tieredkv_common.agent_limits import MAX_INFLIGHT_KEYS


class State(enum.Enum):
    """Where a connection is in its lifecycle (see the module docstring)."""

    AWAIT_HELLO = "await_hello"
    READY = "ready"
    DRAINING = "draining"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits; the agent reports them in HelloOk so the plugin can split its batches.

    The Session enforces `max_keys` and `max_inflight_jobs`; `max_frame_bytes` is the connection's
    decoder's to enforce: build it with `framing.client_decoder(limits.max_frame_bytes)`.
    """

    max_frame_bytes: int = MAX_FRAME_BYTES
    max_keys: int = MAX_KEYS
    max_inflight_jobs: int = MAX_INFLIGHT_JOBS
    max_inflight_keys: int = MAX_INFLIGHT_KEYS
    """Keys of Store and Load jobs accepted and not yet finished."""

    def __post_init__(self) -> None:
        if min(self.max_frame_bytes, self.max_keys, self.max_inflight_jobs, self.max_inflight_keys) < 1:
            raise ValueError("limits must be positive")


@dataclass(frozen=True, slots=True)
class Verdict:
    """`accepted`: act on the message (look up, submit, close). `reply`: send this now, if not None."""

    accepted: bool
    reply: ServerMessage | None = None
    refusal: str | None = None
    """When a resource limit refused the message: the `reason` label it is counted under."""


HelloCheck = Callable[[Hello], str | None]
"""Returns why the agent cannot serve this Hello's profile (INCOMPATIBLE), or None to accept it."""


def region_slots(region_bytes: int, block_bytes: int) -> int:
    """How many blocks the region holds; ProtocolError(BAD_REGION) unless it is a whole, non-zero number."""
    if block_bytes <= 0 or region_bytes <= 0 or region_bytes % block_bytes:
        message = f"a region of {region_bytes} bytes is not a whole number of {block_bytes}-byte blocks"
        raise ProtocolError(ErrorCode.BAD_REGION, message)
    return region_bytes // block_bytes


def region_owner_problem(file_uid: int, file_mode: int, peer_uid: int) -> str | None:
    """Why a region file cannot be the connecting process's own, or None.

    The peer must own the file (it created it: vLLM makes its region with O_CREAT|O_EXCL), and nobody
    else may write to it: a region another user can write is one whose blocks nobody can vouch for.
    """
    if not stat.S_ISREG(file_mode):
        return "the region descriptor is no regular file"
    if file_uid != peer_uid:
        return f"the region file belongs to uid {file_uid}, not to the connecting process (uid {peer_uid})"
    if file_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"the region file is writable by other users (mode {stat.S_IMODE(file_mode):04o})"
    return None


def slot_offset(slot: int, block_bytes: int) -> int:
    """The byte offset of a slot in the region."""
    return slot * block_bytes


def check_slots(slots: Sequence[int], slot_count: int, *, job_id: int | None = None) -> None:
    """ProtocolError(BAD_REQUEST) if any slot lies outside a region of `slot_count` blocks."""
    if slots and (min(slots) < 0 or max(slots) >= slot_count):
        bad = next(slot for slot in slots if not 0 <= slot < slot_count)
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"slot {bad} is outside the region's {slot_count} slots", job_id=job_id
        )


class Session:
    """The protocol state of one connection (agent side)."""

    def __init__(
        self,
        *,
        agent_version: str,
        limits: Limits | None = None,
        versions: tuple[int, ...] = SUPPORTED_VERSIONS,
        check_hello: HelloCheck | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self._agent_version = agent_version
        self._versions = versions
        self._check_hello = check_hello
        self._lock = threading.Lock()
        self._state = State.AWAIT_HELLO
        self._hello: Hello | None = None
        self._slots = 0
        self._key_bytes = 0
        self._in_flight: dict[int, int] = {}
        """Job id -> its key count."""
        self._in_flight_keys = 0
        self._drain_request: int | None = None

    @property
    def state(self) -> State:
        return self._state

    @property
    def hello(self) -> Hello | None:
        """The accepted Hello (its profile names the namespace and block size), None before."""
        return self._hello

    @property
    def region_slots(self) -> int:
        return self._slots

    @property
    def in_flight(self) -> int:
        """Store and Load jobs accepted and not yet finished."""
        return len(self._in_flight)

    @property
    def in_flight_keys(self) -> int:
        """Their keys."""
        return self._in_flight_keys

    def receive(self, message: ClientMessage, *, region_bytes: int | None = None) -> Verdict:
        """Judge one decoded message (the reader thread).

        `region_bytes` is the size (fstat) of the descriptor that came with a Hello, None if none did.
        """
        with self._lock:
            try:
                return self._receive_locked(message, region_bytes)
            except _LimitRefusalError as refusal:
                return Verdict(False, refusal.error.to_message(), refusal.reason)
            except ProtocolError as error:
                return Verdict(False, error.to_message())

    def finish(self, job_id: int) -> Drained | None:
        """The JobDone of `job_id` is being sent (the sending thread).

        Returns the Drained to send right after it when this was the last job a drain waited for.
        """
        with self._lock:
            if job_id not in self._in_flight:
                raise ValueError(f"job {job_id} is not in flight")
            self._in_flight_keys -= self._in_flight.pop(job_id)
            if self._state != State.DRAINING or self._in_flight or self._drain_request is None:
                return None
            self._state = State.READY
            request_id, self._drain_request = self._drain_request, None
            return Drained(request_id=request_id)

    def _receive_locked(self, message: ClientMessage, region_bytes: int | None) -> Verdict:
        self._check_state(message)
        match message:
            case Hello():
                return Verdict(True, self._accept_hello(message, region_bytes))
            case Lookup():
                self._check_batch(message.namespace, message.keys, request_id=message.request_id)
                return Verdict(True)
            case Store() | Load():
                self._accept_job(message)
                return Verdict(True)
            case Drain():
                return Verdict(True, self._accept_drain(message))
            case Goodbye():
                self._state = State.CLOSED
                return Verdict(True)

    def _check_state(self, message: ClientMessage) -> None:
        """ProtocolError(OUT_OF_ORDER) unless the state allows this kind of message."""
        name = type(message).__name__
        allowed = {
            State.AWAIT_HELLO: (Hello, Goodbye),
            State.READY: (Lookup, Store, Load, Drain, Goodbye),
            State.DRAINING: (Lookup, Goodbye),
            State.CLOSED: (),
        }[self._state]
        if isinstance(message, allowed):
            return
        why = {
            State.AWAIT_HELLO: "the first message must be a Hello",
            State.READY: "the Hello was already accepted",
            State.DRAINING: "a drain is pending; no jobs until Drained",
            State.CLOSED: "the connection said Goodbye",
        }[self._state]
        request_id, job_id = _ids(message)
        message_text = f"{name} refused: {why}"
        raise ProtocolError(ErrorCode.OUT_OF_ORDER, message_text, request_id=request_id, job_id=job_id)

    def _accept_hello(self, hello: Hello, region_bytes: int | None) -> HelloOk:
        if hello.version not in self._versions:
            raise unsupported_version(hello.version, self._versions)
        slots = _hello_region(hello, region_bytes)
        reason = self._check_hello(hello) if self._check_hello else None
        if reason is not None:
            raise ProtocolError(ErrorCode.INCOMPATIBLE, reason)
        self._state, self._hello, self._slots = State.READY, hello, slots
        self._key_bytes = KEY_BYTES[hello.profile.hash_algo]
        limits = self.limits
        return HelloOk(
            version=hello.version,
            agent_version=self._agent_version,
            region_slots=slots,
            max_frame_bytes=limits.max_frame_bytes,
            max_keys=limits.max_keys,
            max_inflight_jobs=limits.max_inflight_jobs,
            max_inflight_keys=limits.max_inflight_keys,
        )

    def _check_batch(
        self,
        namespace: str,
        keys: Sequence[bytes],
        *,
        request_id: int | None = None,
        job_id: int | None = None,
    ) -> None:
        """The checks common to Lookup, Store and Load: key count, namespace, key length."""
        problem = self._batch_problem(namespace, keys)
        if problem is not None:
            raise ProtocolError(problem[0], problem[1], request_id=request_id, job_id=job_id)

    def _batch_problem(self, namespace: str, keys: Sequence[bytes]) -> tuple[ErrorCode, str] | None:
        assert self._hello is not None  # the state check let only a READY or DRAINING session through
        served = self._hello.profile.namespace
        if len(keys) > self.limits.max_keys:
            return ErrorCode.LIMIT_EXCEEDED, f"{len(keys)} keys exceed the limit of {self.limits.max_keys}"
        if namespace != served:
            return ErrorCode.BAD_REQUEST, f"namespace {namespace!r} is not this connection's ({served!r})"
        wrong = sorted(set(map(len, keys)) - {self._key_bytes})
        if wrong:
            return ErrorCode.BAD_REQUEST, f"keys of {wrong} bytes; this profile's keys have {self._key_bytes}"
        return None

    def _accept_job(self, job: Store | Load) -> None:
        self._check_batch(job.namespace, job.keys, job_id=job.job_id)
        problem = self._job_problem(job)
        if problem is not None:
            raise ProtocolError(problem[0], problem[1], job_id=job.job_id)
        check_slots(job.slots, self._slots, job_id=job.job_id)
        count = len(job.keys)
        if self._in_flight_keys + count > self.limits.max_inflight_keys:
            text = (
                f"a job of {count} keys exceeds this connection's limit of {self.limits.max_inflight_keys} "
                f"keys in flight ({self._in_flight_keys} in flight)"
            )
            error = ProtocolError(ErrorCode.LIMIT_EXCEEDED, text, job_id=job.job_id)
            raise _LimitRefusalError(error, "inflight_keys")
        self._in_flight[job.job_id] = count
        self._in_flight_keys += count

    def _job_problem(self, job: Store | Load) -> tuple[ErrorCode, str] | None:
        if len(self._in_flight) >= self.limits.max_inflight_jobs:
            return ErrorCode.LIMIT_EXCEEDED, f"{len(self._in_flight)} jobs in flight already (the limit)"
        if job.job_id in self._in_flight:
            return ErrorCode.BAD_REQUEST, f"job {job.job_id} is already in flight"
        if len(job.slots) != len(job.keys):
            return ErrorCode.BAD_REQUEST, f"{len(job.keys)} keys but {len(job.slots)} slots"
        if isinstance(job, Load) and len(set(job.slots)) != len(job.slots):
            return ErrorCode.BAD_REQUEST, "a load names one slot for two keys"
        return None

    def _accept_drain(self, drain: Drain) -> Drained | None:
        if not self._in_flight:
            return Drained(request_id=drain.request_id)
        self._state, self._drain_request = State.DRAINING, drain.request_id
        return None


class _LimitRefusalError(Exception):
    """A resource limit refused a message: the Error to send and the refusal's metric reason."""

    def __init__(self, error: ProtocolError, reason: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.reason = reason


def _hello_region(hello: Hello, region_bytes: int | None) -> int:
    """The slot count of the Hello's region; ProtocolError(BAD_REGION) if it has no usable region."""
    if region_bytes is None:
        raise ProtocolError(ErrorCode.BAD_REGION, "no region descriptor came with the Hello")
    if region_bytes != hello.region_bytes:
        message = f"the region descriptor maps {region_bytes} bytes, the Hello says {hello.region_bytes}"
        raise ProtocolError(ErrorCode.BAD_REGION, message)
    return region_slots(region_bytes, hello.profile.block_bytes)


def _ids(message: ClientMessage) -> tuple[int | None, int | None]:
    """(request id, job id) of a message, None where it has none."""
    if isinstance(message, Store | Load):
        return None, message.job_id
    if isinstance(message, Lookup | Drain):
        return message.request_id, None
    return None, None


_LOOKUP_CODES = {
    LookupResult.MISS: LookupCode.MISS,
    LookupResult.HIT: LookupCode.HIT,
    LookupResult.RETRY: LookupCode.RETRY,
}


def lookup_reply(request_id: int, results: Sequence[LookupResult]) -> LookupReply:
    """The reply to a Lookup from the tier's answers (the reader thread)."""
    return LookupReply(request_id=request_id, results=bytes(map(_LOOKUP_CODES.__getitem__, results)))


_FAILURE_REASONS = (
    (KeyStatus.NO_SPACE, "no_space"),
    (KeyStatus.REGION, "region"),
    (KeyStatus.FAILED, "io_error"),
)


def failure_reason(statuses: Sequence[KeyStatus]) -> str:
    """The JobDone's `reason`: the first of no_space, region, io_error any key failed with, else ""."""
    present = set(statuses)
    return next((reason for status, reason in _FAILURE_REASONS if status in present), "")


def job_done(result: JobResult) -> JobDone:
    """The JobDone of a finished engine job (whichever thread sends it)."""
    reason = failure_reason(result.statuses)
    return JobDone.of(result.job_id, result.key_success, result.transfer_bytes, result.elapsed_s, reason)
