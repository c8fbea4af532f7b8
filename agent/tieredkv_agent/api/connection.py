"""One instance's connection on the agent side: its reader thread, its outbox, its region, its jobs.

Threads:

* `tkv-api-conn-<n>` (`run`): receives bytes and the region descriptor (`recvmsg`, SCM_RIGHTS), decodes
  frames, runs the connection's `Session`, answers Hellos and Lookups and submits Store/Load jobs. A store
  reads its slots from the region descriptor into a staging buffer here (`engine.region`);
* `tkv-api-out-<n>` (the `Outbox`): sends every reply; a load's region write runs there before its JobDone;
* the tiers' threads call each job's completion sink, which only queues work for the outbox.

The region is never mapped: whatever the client does to its file, a job fails, never the agent. When the
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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tieredkv_agent.api.framing import FrameEncoder, client_decoder
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
from tieredkv_agent.api.session import Session, job_done, lookup_reply, region_owner_problem
from tieredkv_agent.engine.jobs import BlockJob, JobResult, KeyStatus
from tieredkv_agent.engine.region import ClientRegion, RegionError, Staging
from tieredkv_agent.store.naming import Namespace

if TYPE_CHECKING:
    from tieredkv_agent.api.server import AgentServer

log = logging.getLogger(__name__)

RECV_BYTES = 256 * 1024
MAX_FDS = 4
"""Descriptors accepted per recvmsg: one is allowed, a few more are received only to be closed."""


@dataclass(frozen=True, slots=True)
class _StagedJob:
    """What the end of a job needs: its slots, its staging buffer, its kind and its in-flight bytes."""

    slots: Sequence[int]
    staging: Staging
    load: bool
    nbytes: int


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

    def _refuse_job(self, job_id: int, code: ErrorCode, text: str) -> None:
        self.session.finish(job_id)
        self.send(ProtocolError(code, text, job_id=job_id).to_message())

    def _submit(self, job: Store | Load) -> None:
        """Stage the job's bytes and hand it to the tier (the connection's thread)."""
        assert self.region is not None and self.namespace is not None
        region, slots = self.region, list(job.slots)
        nbytes = len(slots) * region.block_bytes
        if not self.server.reserve_inflight(nbytes):
            text = f"the agent's in-flight bytes are spent; job of {nbytes} bytes refused"
            self.server.refuse("total_inflight_bytes", f"{self.name}: {text}")
            self._refuse_job(job.job_id, ErrorCode.OVERLOADED, text)
            return
        staging = Staging(len(slots), region.block_bytes, self.server.staging)
        region.retain()
        if isinstance(job, Store):
            try:
                region.read_slots(slots, staging.base)
            except RegionError as exc:
                self._end_job(region, staging, nbytes)
                self.server.refuse("region_io", f"{self.name}: job {job.job_id}: {exc}")
                self._refuse_job(job.job_id, ErrorCode.BAD_REGION, str(exc))
                return
        blocks = list(zip(job.keys, staging.views, strict=True))
        block_job = BlockJob(job.job_id, self.namespace, blocks, cancelled=self.gone)
        load = isinstance(job, Load)

        def on_done(result: JobResult) -> None:
            """Queue the region write and the JobDone (the tier's threads, or this one)."""
            job_bytes = _StagedJob(slots, staging, load, nbytes)
            self.outbox.defer(lambda sendable: self._finish(result, job_bytes, sendable))

        submit = self.server.tier.submit_load if load else self.server.tier.submit_store
        try:
            submit(block_job, on_done)
        except Exception as exc:
            self._end_job(region, staging, nbytes)
            self._refuse_job(job.job_id, ErrorCode.INTERNAL, f"job not accepted: {exc}")

    def _end_job(self, region: ClientRegion, staging: Staging, nbytes: int) -> None:
        staging.close()
        region.release()
        self.server.release_inflight(nbytes)

    def _finish(self, result: JobResult, job: _StagedJob, sendable: bool) -> list[ServerMessage]:
        """Write a load's blocks into the region, then the JobDone and maybe a Drained (the writer thread)."""
        region = self.region
        assert region is not None
        try:
            if job.load and sendable and self.alive:
                result = self._write_back(region, result, job.slots, job.staging)
        finally:
            self._end_job(region, job.staging, job.nbytes)
        reply: list[ServerMessage] = [job_done(result)]
        drained = self.session.finish(result.job_id)
        if drained is not None:
            reply.append(drained)
        return reply

    def _write_back(
        self, region: ClientRegion, result: JobResult, slots: Sequence[int], staging: Staging
    ) -> JobResult:
        loaded = [index for index, status in enumerate(result.statuses) if status is KeyStatus.DONE]
        try:
            region.write_slots(slots, staging.base, loaded)
        except RegionError as exc:
            self.server.refuse("region_io", f"{self.name}: job {result.job_id}: {exc}")
            failed = tuple(KeyStatus.REGION if status.ok else status for status in result.statuses)
            return JobResult(result.job_id, result.kind, result.keys, failed, 0, result.elapsed_s)
        return result
