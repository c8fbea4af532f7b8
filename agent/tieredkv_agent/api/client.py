"""The plugin's side of the node socket API: one connection from a vLLM instance to its node agent.

No torch, no vLLM: the vLLM tier plugin wraps this. Threads:

* the caller's thread (vLLM's scheduler) runs every public method; none blocks longer than `timeout_s`;
* `tkv-api-client` decodes the agent's frames: it answers waiting lookups and drains and queues
  JobDones for `poll`.

A dead agent never raises into the caller: `connected` turns False, every job in flight is reported
failed exactly once by `poll`, later jobs likewise, and lookups answer MISS for every key.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence

from tieredkv_agent.api.framing import FrameEncoder, server_decoder
from tieredkv_agent.api.protocol import (
    PROTOCOL_VERSION,
    CompatProfile,
    Drain,
    Drained,
    Error,
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
    pack_bits,
)

log = logging.getLogger(__name__)

RECV_BYTES = 256 * 1024


class AgentRejected(Exception):  # noqa: N818 (the name the plugin catches)
    """The agent refused the Hello (or closed before answering); `error` is its Error, if it sent one."""

    def __init__(self, message: str, error: Error | None = None) -> None:
        super().__init__(message)
        self.error = error


class _Waiter:
    """A lookup or drain waiting for its reply (caller thread waits, reader thread sets)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: ServerMessage | None = None


def _failed(job_id: int, keys: int) -> JobDone:
    return JobDone(job_id=job_id, success=False, key_ok=pack_bits([False] * keys))


class AgentClient:
    """A connection to the node agent; `connected` says whether the agent is still there."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        instance_id: str,
        vllm_version: str,
        profile: CompatProfile,
        region_fd: int,
        region_bytes: int,
        timeout_s: float = 5.0,
        run_config: str | None = None,
    ) -> None:
        """Connect, send the Hello with the region descriptor, wait for HelloOk (caller thread).

        Raises AgentRejected with the agent's Error, or OSError when the socket cannot be reached.
        """
        self.profile = profile
        self.timeout_s = timeout_s
        self._encoder = FrameEncoder()
        self._decoder = server_decoder()
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._jobs: dict[int, int] = {}
        self._done: list[JobDone] = []
        self._cut_off: set[int] = set()
        self._waiters: dict[tuple[str, int], _Waiter] = {}
        self._ids = itertools.count(1)
        self._connected = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout_s)
            self._sock.connect(os.fspath(socket_path))
            hello = Hello(
                version=PROTOCOL_VERSION,
                instance_id=instance_id,
                vllm_version=vllm_version,
                profile=profile,
                region_bytes=region_bytes,
                run_config=run_config,
            )
            self.hello_ok = self._handshake(hello, region_fd)
        except BaseException:
            self._sock.close()
            raise
        self._connected = True
        self._reader = threading.Thread(target=self._read_loop, name="tkv-api-client", daemon=True)
        self._reader.start()

    def _handshake(self, hello: Hello, region_fd: int) -> HelloOk:
        frame = self._encoder.encode(hello)
        sent = socket.send_fds(self._sock, [frame], [region_fd])
        if sent < len(frame):
            self._sock.sendall(frame[sent:])
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            try:
                data = self._sock.recv(RECV_BYTES)
            except TimeoutError:
                break
            if not data:
                raise AgentRejected("the agent closed the connection before answering the Hello")
            for item in self._decoder.feed(data):
                if isinstance(item, HelloOk):
                    return item
                error = item.to_message() if isinstance(item, ProtocolError) else item
                if isinstance(error, Error):
                    raise AgentRejected(
                        f"the agent refused the Hello: {error.code.name}: {error.message}", error
                    )
        raise AgentRejected(f"no answer to the Hello within {self.timeout_s} s")

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def pending_jobs(self) -> int:
        """Jobs sent and not yet in the poll queue (any thread)."""
        with self._lock:
            return len(self._jobs)

    def lookup(
        self,
        namespace: str,
        keys: Sequence[bytes],
        request_id: int | None = None,
        *,
        vllm_request_id: str | None = None,
    ) -> list[LookupCode]:
        """HIT / MISS / RETRY per key; all MISS when the agent is gone or slow (caller thread)."""
        rid = next(self._ids) if request_id is None else request_id
        message = Lookup(
            request_id=rid, namespace=namespace, keys=list(keys), vllm_request_id=vllm_request_id
        )
        reply = self._round_trip("lookup", rid, message)
        if isinstance(reply, LookupReply) and len(reply.results) == len(keys):
            try:
                return reply.codes()
            except ValueError:
                log.warning("lookup %d: the agent answered an unknown code", rid)
        elif isinstance(reply, Error):
            log.warning("lookup %d refused: %s: %s", rid, reply.code.name, reply.message)
        return [LookupCode.MISS] * len(keys)

    def submit_store(self, job_id: int, namespace: str, keys: Sequence[bytes], slots: Sequence[int]) -> None:
        """Send a Store; its JobDone comes from `poll` (caller thread; never waits for the job)."""
        self._submit(Store(job_id=job_id, namespace=namespace, keys=list(keys), slots=list(slots)))

    def submit_load(self, job_id: int, namespace: str, keys: Sequence[bytes], slots: Sequence[int]) -> None:
        """Send a Load; its JobDone comes from `poll` (caller thread; never waits for the job)."""
        self._submit(Load(job_id=job_id, namespace=namespace, keys=list(keys), slots=list(slots)))

    def _submit(self, job: Store | Load) -> None:
        with self._lock:
            if job.job_id in self._jobs:
                raise ValueError(f"job {job.job_id} is already in flight")
            self._jobs[job.job_id] = len(job.keys)
        if not self._connected or not self._send(job):
            self._fail_job(job.job_id)

    def poll(self) -> list[JobDone]:
        """Every JobDone received (or a failed one made up) since the last poll; never blocks."""
        with self._lock:
            done, self._done = self._done, []
        return done

    def take_cut_off(self) -> set[int]:
        """Jobs reported failed because the connection ended while the agent held them (caller thread).

        The agent may still be finishing I/O for them (it cancels only queued blocks), so a failed load
        among them may still be writing into its region slots for a while.
        """
        with self._lock:
            cut_off, self._cut_off = self._cut_off, set()
        return cut_off

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every job sent so far is reported; False on timeout or a gone agent (caller)."""
        rid = next(self._ids)
        reply = self._round_trip("drain", rid, Drain(request_id=rid), timeout_s)
        return isinstance(reply, Drained)

    def close(self) -> None:
        """Say Goodbye and close; jobs still in flight are reported failed by `poll` (caller thread)."""
        if self._connected:
            self._send(Goodbye(reason="client closing"))
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(self.timeout_s)
        self._sock.close()
        self._disconnected()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _round_trip(
        self, kind: str, rid: int, message: Lookup | Drain, timeout_s: float | None = None
    ) -> ServerMessage | None:
        """Send and wait for the reply naming `rid`; None if the agent is gone or too slow."""
        waiter = _Waiter()
        with self._lock:
            if not self._connected:
                return None
            self._waiters[(kind, rid)] = waiter
        try:
            if not self._send(message):
                return None
            waiter.done.wait(self.timeout_s if timeout_s is None else timeout_s)
            return waiter.reply
        finally:
            with self._lock:
                self._waiters.pop((kind, rid), None)

    def _send(self, message: Lookup | Drain | Store | Load | Goodbye) -> bool:
        """Send one frame (caller thread); False (and disconnected) if the agent is gone."""
        try:
            frame = self._encoder.encode(message)
            with self._send_lock:
                self._sock.sendall(frame, socket.MSG_NOSIGNAL)
        except OSError as exc:
            log.warning("the agent connection failed while sending: %s", exc)
            self._disconnected()
            return False
        return True

    def _read_loop(self) -> None:
        """Decode the agent's frames until it goes (the reader thread)."""
        try:
            while self._connected:
                try:
                    data = self._sock.recv(RECV_BYTES)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                for item in self._decoder.feed(data):
                    self._dispatch(item)
        finally:
            self._disconnected()

    def _dispatch(self, item: ServerMessage | ProtocolError) -> None:
        """Route one message from the agent (the reader thread)."""
        if isinstance(item, ProtocolError):
            log.warning("undecodable frame from the agent: %s", item.message)
        elif isinstance(item, JobDone):
            with self._lock:
                if self._jobs.pop(item.job_id, None) is not None:
                    self._done.append(item)
        elif isinstance(item, LookupReply):
            self._answer("lookup", item.request_id, item)
        elif isinstance(item, Drained):
            self._answer("drain", item.request_id, item)
        elif isinstance(item, Error):
            self._error(item)
        elif isinstance(item, Goodbye):
            log.info("the agent said goodbye: %s", item.reason)
            self._connected = False

    def _error(self, error: Error) -> None:
        log.warning("the agent refused a frame: %s: %s", error.code.name, error.message)
        if error.job_id is not None:
            self._fail_job(error.job_id)
        if error.request_id is not None:
            self._answer("lookup", error.request_id, error)
            self._answer("drain", error.request_id, error)

    def _answer(self, kind: str, rid: int, reply: ServerMessage) -> None:
        with self._lock:
            waiter = self._waiters.get((kind, rid))
        if waiter is not None:
            waiter.reply = reply
            waiter.done.set()

    def _fail_job(self, job_id: int) -> None:
        with self._lock:
            keys = self._jobs.pop(job_id, None)
            if keys is not None:
                self._done.append(_failed(job_id, keys))

    def _disconnected(self) -> None:
        """The agent is gone: fail every job in flight once, wake every waiter (any thread)."""
        with self._lock:
            self._connected = False
            jobs, self._jobs = self._jobs, {}
            self._cut_off.update(jobs)
            self._done.extend(_failed(job_id, keys) for job_id, keys in jobs.items())
            waiters = list(self._waiters.values())
        for waiter in waiters:
            waiter.done.set()
