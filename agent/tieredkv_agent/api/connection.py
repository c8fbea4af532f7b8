"""One instance's connection on the agent side: its reader thread, its outbox, its region, its jobs.

Threads:

* `tkv-api-conn-<n>` (`run`): receives bytes and the region descriptor (`recvmsg`, SCM_RIGHTS), decodes
  frames, runs the connection's `Session`, answers Hellos and Lookups and submits Store/Load jobs. A staged
  store reads its slots from the region descriptor into a staging buffer here (`engine.region`);
* `tkv-api-out-<n>` (the `Outbox`): sends every reply; a load's region write runs there before its JobDone,
  and a job's later chunks are staged there (`tieredkv_agent.api.jobs`);
* the tiers' threads call each job's completion sink, which only queues work for the outbox.

The region is mapped, but only the kernel reads or writes it (in-place jobs hand its views to system calls
only): whatever the client does to its file, a job fails, never the agent. When the
connection ends, its queued blocks are cancelled (`gone`), running I/O finishes, results are dropped and
the region descriptor closes with the last job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
from typing import TYPE_CHECKING

from tieredkv_agent.api.framing import FrameEncoder, client_decoder
from tieredkv_agent.api.jobs import StagedJob, StagingBudget
from tieredkv_agent.api.outbox import Outbox, set_send_timeout
from tieredkv_agent.api.protocol import (
    ClientMessage,
    Error,
    ErrorCode,
    Goodbye,
    Hello,
    Load,
    Lookup,
    ProtocolError,
    ServerMessage,
    Store,
)
from tieredkv_agent.api.session import Session, lookup_reply, region_owner_problem
from tieredkv_agent.engine.region import ClientRegion
from tieredkv_agent.store.naming import Namespace

if TYPE_CHECKING:
    from tieredkv_agent.api.server import AgentServer

log = logging.getLogger(__name__)

RECV_BYTES = 256 * 1024
MAX_FDS = 4
"""Descriptors accepted per recvmsg: one is allowed, a few more are received only to be closed."""


class Connection:
    """One instance's connection: socket, decoder, session, outbox and region."""

    def __init__(self, server: AgentServer, sock: socket.socket, number: int) -> None:
        self.server = server
        self.sock = sock
        self.name = f"tkv-api-conn-{number}"
        limits = server.limits
        self.session = Session(
            agent_version=server.agent_version, limits=limits, check_hello=server.check_hello
        )
        self.decoder = client_decoder(limits.max_frame_bytes)
        set_send_timeout(sock, server.send_timeout_s)
        self.outbox = Outbox(
            sock,
            FrameEncoder(limits.max_frame_bytes),
            name=f"tkv-api-out-{number}",
            max_bytes=server.max_send_queue_bytes,
            on_overflow=self._overflowed,
            on_failure=self._send_failed,
        )
        self.region: ClientRegion | None = None
        self.namespace: Namespace | None = None
        self.alive = True
        self.gone = threading.Event()
        """Set when the connection ends: its queued blocks are cancelled (running I/O finishes)."""
        self.buffered = 0
        """Bytes of partial frame this connection holds (the server's agent-wide budget counts them)."""
        self.budget = StagingBudget(server.agent_limits.max_staged_bytes)
        self.chunk_bytes = min(server.agent_limits.staging_chunk_bytes, server.agent_limits.max_staged_bytes)
        """A job is staged in chunks of at most this many bytes (see `tieredkv_agent.api.jobs`)."""
        self.thread = threading.Thread(target=self.run, name=self.name, daemon=True)

    def start(self) -> None:
        """Start the writer, then the reader (the accept thread); RuntimeError if a thread cannot start."""
        self.outbox.start()
        self.thread.start()

    def send(self, message: ServerMessage) -> None:
        """Queue one reply (any thread; never blocks on the client)."""
        if self.alive:
            self.outbox.put(message)

    def kill(self, why: str) -> None:
        """End the connection now: both threads wake, its jobs are cancelled (any thread)."""
        if self.alive:
            log.info("%s: closing the connection: %s", self.name, why)
        self.alive = False
        self.gone.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _overflowed(self, queued: int) -> None:
        self.server.refuse("send_queue", f"{self.name}: {queued} reply bytes queued and not read")
        self.kill("the client does not read its replies")

    def _send_failed(self, why: str) -> None:
        if "send timeout" in why:
            self.server.refuse("send_queue", f"{self.name}: {why}")
        self.kill(why)

    def run(self) -> None:
        """Read, decode and act until the peer goes or the server closes (the connection's thread)."""
        try:
            self._read_loop()
        except Exception:
            log.exception("%s: reader failed", self.name)
        finally:
            self.alive = False
            self.gone.set()
            self.outbox.defer(self.resume_waiting_deferred)  # cancels the waiting jobs
            self.server.account_buffered(self, 0)
            if self.region is not None:
                self.region.release()
            self.server.forget(self)
            self._close_socket()

    def _close_socket(self) -> None:
        """Let the writer send what is queued (bounded by the send timeout), then close (the reader)."""
        self.outbox.close()
        self.outbox.thread.join(self.server.send_timeout_s + 1.0)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.outbox.thread.join(1.0)
        if not self.outbox.thread.is_alive():  # never close a descriptor another thread still uses
            self.sock.close()

    def _read_loop(self) -> None:
        pending_fd: int | None = None
        try:
            while self.alive:
                try:
                    data, fds, _flags, _addr = socket.recv_fds(self.sock, RECV_BYTES, MAX_FDS)
                except OSError:
                    return
                if fds:
                    pending_fd = self._take_fds(pending_fd, fds)
                if not data:
                    return
                for item in self.decoder.feed(data):
                    pending_fd = self._handle(item, pending_fd)
                if not self.server.account_buffered(self, self.decoder.buffered):
                    return
                if pending_fd is not None and not self.decoder.buffered:
                    os.close(pending_fd)  # it came with no Hello
                    pending_fd = None
        finally:
            if pending_fd is not None:
                os.close(pending_fd)

    def _take_fds(self, pending_fd: int | None, fds: list[int]) -> int | None:
        """Keep one descriptor for the next Hello; close older ones and all of a batch of several."""
        if pending_fd is not None:
            os.close(pending_fd)
        if len(fds) == 1:
            return fds[0]
        for fd in fds:
            os.close(fd)
        return None

    def _handle(self, item: ClientMessage | ProtocolError, pending_fd: int | None) -> int | None:
        """Act on one decoded frame; returns the descriptor still pending (the connection's thread)."""
        if isinstance(item, ProtocolError):
            self.send(item.to_message())
            if item.fatal:
                self.alive = False
            return pending_fd
        if isinstance(item, Hello):
            try:
                self._hello(item, pending_fd)
            finally:
                if pending_fd is not None and (self.region is None or self.region.fd != pending_fd):
                    os.close(pending_fd)
            return None
        verdict = self.session.receive(item)
        if not verdict.accepted:
            if verdict.refusal is not None:
                self.server.refuse(verdict.refusal, f"{self.name}: {type(item).__name__} over a limit")
            if verdict.reply is not None:
                self.send(verdict.reply)
            return pending_fd
        if isinstance(item, Lookup):
            self._lookup(item)
        elif isinstance(item, Store | Load):
            self._submit(item)
        elif isinstance(item, Goodbye):
            log.info("%s: goodbye (%r)", self.name, item.reason)
            self.alive = False
        elif verdict.reply is not None:
            self.send(verdict.reply)
        return pending_fd

    def _hello(self, hello: Hello, fd: int | None) -> None:
        """Check the region descriptor and the profile, pin the namespace's block size, answer."""
        size: int | None = None
        if fd is not None:
            info = os.fstat(fd)
            problem = region_owner_problem(info.st_uid, info.st_mode, self.peer_uid())
            if problem is not None:
                log.warning("%s: hello from %r refused: %s", self.name, hello.instance_id, problem)
                self.send(Error(code=ErrorCode.BAD_REGION, message=problem))
                return
            size = info.st_size
            if size > self.server.max_region_bytes:
                text = f"a region of {size} bytes exceeds the agent's limit of {self.server.max_region_bytes}"
                self.server.refuse("region_bytes", f"{self.name}: {text}")
                self.send(Error(code=ErrorCode.BAD_REGION, message=text))
                return
        verdict = self.session.receive(hello, region_bytes=size)
        if not verdict.accepted or fd is None or size is None:
            if verdict.reply is not None:
                self.send(verdict.reply)
            return
        self.region = ClientRegion(fd, size, hello.profile.block_bytes)
        self.region.map()
        self.namespace = self.server.namespace(hello.profile.namespace, hello.run_config)
        log.info("%s: hello from %r (vllm %r)", self.name, hello.instance_id, hello.vllm_version)
        if verdict.reply is not None:
            self.send(verdict.reply)

    def peer_uid(self) -> int:
        """The user id of the process that connected (SO_PEERCRED, as of its connect)."""
        creds = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return int(uid)

    def _lookup(self, lookup: Lookup) -> None:
        assert self.namespace is not None
        try:
            answers = self.server.tier.lookup(self.namespace, lookup.keys, lookup.vllm_request_id)
        except Exception as exc:
            log.exception("%s: lookup failed", self.name)
            error = ProtocolError(ErrorCode.INTERNAL, f"lookup failed: {exc}", request_id=lookup.request_id)
            self.send(error.to_message())
            return
        self.send(lookup_reply(lookup.request_id, answers))

    def _submit(self, message: Store | Load) -> None:
        """Stage the job's first chunk now, or queue it until budget comes back (the reader thread)."""
        assert self.region is not None
        job = StagedJob(self, message, self.region)
        if not job.chunks:
            self.outbox.defer(lambda _sendable: job.report())
            return
        self.stage_or_wait(job)

    def stage_or_wait(self, job: StagedJob) -> None:
        """Run the job's next chunk if both budgets allow and nobody waits before it; else queue it."""
        budget = self.budget
        with budget.lock:
            blocked = "queue" if budget.waiting else self._reserve_locked(job.next_chunk_bytes)
            if blocked:
                budget.waiting.append(job)
        if not blocked:
            job.run_chunk()
        elif blocked == "agent":
            self.server.note_waiting(self, job.next_chunk_bytes)

    def resume_waiting(self) -> list[ServerMessage]:
        """Run waiting chunks while budget allows; cancel them all once the connection is gone (writer)."""
        budget = self.budget
        while True:
            with budget.lock:
                if not budget.waiting:
                    return []
                job = budget.waiting[0]
                gone = self.gone.is_set()
                blocked = None if gone else self._reserve_locked(job.next_chunk_bytes)
                if blocked:
                    break
                budget.waiting.popleft()
            if gone:
                job.report()  # its replies cannot be sent; this settles the session's bookkeeping
            else:
                job.run_chunk()
        if blocked == "agent":  # else this connection's own chunks, when they end, resume it
            self.server.note_waiting(self, job.next_chunk_bytes)
        return []

    def resume_waiting_deferred(self, sendable: bool) -> list[ServerMessage]:
        """`resume_waiting` as outbox work (the server defers it when agent-wide budget comes back)."""
        return self.resume_waiting()

    def _reserve_locked(self, nbytes: int) -> str | None:
        """Take `nbytes` of this connection's and the agent's staging budgets (under `budget.lock`);
        None, or which budget is spent: "connection" or "agent"."""
        if not self.budget.fits(nbytes):
            return "connection"
        if not self.server.reserve_staged(nbytes):
            return "agent"
        self.budget.staged += nbytes
        return None

    def release_staging(self, nbytes: int) -> None:
        """A chunk ended: give its bytes back to both budgets (the writer thread)."""
        with self.budget.lock:
            self.budget.staged -= nbytes
        self.server.release_staged(nbytes)
