"""The agent's side of the node socket API: a Unix socket server that runs vLLM instances' block jobs.

One `AgentServer` per agent. Threads:

* `tkv-api-accept`: accepts connections and starts a reader for each;
* `tkv-api-conn-<n>`: one reader per connection. It receives bytes and the region descriptor
  (`recvmsg`, SCM_RIGHTS), decodes frames, runs the connection's `Session`, answers Hellos and Lookups
  itself and submits Store/Load jobs to the tier;
* the tier's threads call each job's completion sink, which sends the JobDone (and a Drained after it)
  under the connection's send lock;
* `close` runs on the agent's main thread.

A connection's region stays mapped until its last in-flight job is reported, even after the connection
is gone: the tier may still be copying into or out of it. Results for a gone connection are dropped.
See docs/protocol.md for the protocol.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from tieredkv_agent.api.framing import FrameEncoder, client_decoder
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
from tieredkv_agent.api.run_config import parse_run_config, write_config_json
from tieredkv_agent.api.session import Limits, Session, job_done, lookup_reply, region_owner_problem
from tieredkv_agent.engine.jobs import BlockJob, JobResult
from tieredkv_agent.store.naming import Namespace
from tieredkv_agent.tiers.base import Tier

log = logging.getLogger(__name__)

MismatchSink = Callable[[str, str, str, str], None]
"""(instance id, offered fingerprint, expected fingerprint, "reject" or "warn")."""

SOCKET_MODE = 0o660
SOCKET_DIR_MODE = 0o770
RECV_BYTES = 256 * 1024
MAX_FDS = 4
"""Descriptors accepted per recvmsg: one is allowed, a few more are received only to be closed."""
_NAMESPACE_NAME = re.compile(r"^[^/\x00]+_[0-9a-f]{12}$")
"""`<safe_model>_<digest12>`: `safe_model_name` replaced every `/`, so the name is one directory."""


class _Region:
    """One connection's mapped region and its in-flight jobs (any thread; guarded by its lock)."""

    def __init__(self, mapped: mmap.mmap, block_bytes: int) -> None:
        self.block_bytes = block_bytes
        self._map = mapped
        self._lock = threading.Lock()
        self._jobs = 0
        self._released = False

    def views(self, slots: list[int]) -> tuple[memoryview, list[memoryview]]:
        """A base view and one slot view per slot for a new job (the reader thread)."""
        with self._lock:
            self._jobs += 1
            base = memoryview(self._map)
        size = self.block_bytes
        return base, [base[slot * size : (slot + 1) * size] for slot in slots]

    def job_ended(self, base: memoryview, views: list[memoryview]) -> None:
        """Release a finished job's views; unmap if the region was released and this was the last."""
        for view in views:
            view.release()
        base.release()
        with self._lock:
            self._jobs -= 1
            close_now = self._released and self._jobs == 0
        if close_now:
            self._unmap()

    def release(self) -> None:
        """The connection is gone: unmap now, or when its last in-flight job ends (the reader thread)."""
        with self._lock:
            self._released = True
            close_now = self._jobs == 0
        if close_now:
            self._unmap()

    def _unmap(self) -> None:
        try:
            self._map.close()
        except BufferError:  # a view escaped somewhere; the mapping goes when it is collected
            log.warning("region still has views at release; leaving it to the garbage collector")


class _Connection:
    """One instance's connection: socket, decoder, session and region."""

    def __init__(self, server: AgentServer, sock: socket.socket, number: int) -> None:
        self.server = server
        self.sock = sock
        self.name = f"tkv-api-conn-{number}"
        self.session = Session(
            agent_version=server.agent_version, limits=server.limits, check_hello=server.check_hello
        )
        self.decoder = client_decoder(server.limits.max_frame_bytes)
        self.encoder = FrameEncoder(server.limits.max_frame_bytes)
        self.send_lock = threading.Lock()
        self.region: _Region | None = None
        self.namespace: Namespace | None = None
        self.alive = True
        self.gone = threading.Event()
        """Set when the connection ends: its queued blocks are cancelled (running I/O finishes)."""
        self.thread = threading.Thread(target=self.run, name=self.name, daemon=True)

    def send(self, message: ServerMessage) -> None:
        """Send one message (any thread); a dead peer marks the connection gone, never raises."""
        with self.send_lock:
            self._send_locked(message)

    def _send_locked(self, message: ServerMessage) -> None:
        if not self.alive:
            return
        try:
            self.sock.sendall(self.encoder.encode(message), socket.MSG_NOSIGNAL)
        except (OSError, ValueError) as exc:
            log.info("%s: send failed (%s); dropping the connection", self.name, exc)
            self.alive = False

    def run(self) -> None:
        """Read, decode and act until the peer goes or the server closes (the connection's thread)."""
        try:
            self._read_loop()
        except Exception:
            log.exception("%s: reader failed", self.name)
        finally:
            self.alive = False
            self.gone.set()
            self.sock.close()
            if self.region is not None:
                self.region.release()
            self.server.forget(self)

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
                if pending_fd is not None:
                    os.close(pending_fd)
            return None
        verdict = self.session.receive(item)
        if not verdict.accepted:
            if verdict.reply is not None:
                self.send(verdict.reply)
            return pending_fd
        if isinstance(item, Lookup):
            self._lookup(item)
        elif isinstance(item, Store | Load):
            self._submit(item)
        elif isinstance(item, Goodbye):
            log.info("%s: goodbye (%s)", self.name, item.reason)
            self.alive = False
        elif verdict.reply is not None:
            self.send(verdict.reply)
        return pending_fd

    def _hello(self, hello: Hello, fd: int | None) -> None:
        size: int | None = None
        if fd is not None:
            info = os.fstat(fd)
            problem = region_owner_problem(info.st_uid, info.st_mode, self.peer_uid())
            if problem is not None:
                log.warning("%s: hello from %s refused: %s", self.name, hello.instance_id, problem)
                self.send(Error(code=ErrorCode.BAD_REGION, message=problem))
                return
            size = info.st_size
        verdict = self.session.receive(hello, region_bytes=size)
        if not verdict.accepted or fd is None or size is None:
            if verdict.reply is not None:
                self.send(verdict.reply)
            return
        try:
            mapped = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError) as exc:
            self.send(Error(code=ErrorCode.BAD_REGION, message=f"cannot map the region: {exc}", fatal=True))
            self.alive = False
            return
        self.region = _Region(mapped, hello.profile.block_bytes)
        self.namespace = self.server.namespace(hello.profile.namespace, hello.run_config)
        log.info("%s: hello from %s (vllm %s)", self.name, hello.instance_id, hello.vllm_version)
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

    def _submit(self, job: Store | Load) -> None:
        assert self.region is not None and self.namespace is not None
        region = self.region
        base, views = region.views(list(job.slots))
        blocks = list(zip(job.keys, views, strict=True))
        block_job = BlockJob(job.job_id, self.namespace, blocks, cancelled=self.gone)

        def on_done(result: JobResult) -> None:
            """Report the job and release its views (the tier's threads, or this one)."""
            region.job_ended(base, views)
            self._report(result)

        submit = self.server.tier.submit_store if isinstance(job, Store) else self.server.tier.submit_load
        try:
            submit(block_job, on_done)
        except Exception as exc:
            region.job_ended(base, views)
            self.session.finish(job.job_id)
            error = ProtocolError(ErrorCode.INTERNAL, f"job not accepted: {exc}", job_id=job.job_id)
            self.send(error.to_message())

    def _report(self, result: JobResult) -> None:
        """Send the JobDone, then the Drained it completes, in that order (the tier's threads)."""
        with self.send_lock:
            self._send_locked(job_done(result))
            drained = self.session.finish(result.job_id)
            if drained is not None:
                self._send_locked(drained)


class AgentServer:
    """Serves the node socket API on `socket_path` for one tier."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        tier: Tier,
        *,
        agent_version: str,
        limits: Limits | None = None,
        expected_fingerprint: str | None = None,
        on_mismatch: Literal["reject", "warn"] = "reject",
        root_dir: str | os.PathLike[str] | None = None,
        on_mismatch_seen: MismatchSink | None = None,
    ) -> None:
        """Bind and listen, then start the accept thread (the agent's main thread).

        `root_dir` is the cache root the namespaces live under (default: the tier's `root_dir`).
        `on_mismatch_seen(instance, offered, expected, action)` hears of every Hello whose fingerprint
        differs (connection threads; it must not wait).
        """
        if on_mismatch not in ("reject", "warn"):
            raise ValueError(f"on_mismatch must be 'reject' or 'warn', not {on_mismatch!r}")
        root = root_dir if root_dir is not None else getattr(tier, "root_dir", None)
        if root is None:
            raise ValueError("root_dir is required for a tier without one")
        self.socket_path = Path(socket_path)
        self.tier = tier
        self.agent_version = agent_version
        self.limits = limits or Limits()
        self.expected_fingerprint = expected_fingerprint
        self.on_mismatch = on_mismatch
        self.on_mismatch_seen = on_mismatch_seen
        self.root_dir = Path(root)
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._namespaces: dict[str, Namespace] = {}
        self._count = 0
        self._closed = False
        self._listener = self._bind()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="tkv-api-accept", daemon=True)
        self._accept_thread.start()

    def _bind(self) -> socket.socket:
        parent = self.socket_path.parent
        parent.mkdir(parents=True, exist_ok=True)
        parent.chmod(SOCKET_DIR_MODE)
        if self.socket_path.is_socket():
            self.socket_path.unlink()  # a stale socket left by an agent that died
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.socket_path))
            self.socket_path.chmod(SOCKET_MODE)
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        return listener

    def _accept_loop(self) -> None:
        """Accept connections until `close` (the accept thread)."""
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    sock.close()
                    return
                self._count += 1
                connection = _Connection(self, sock, self._count)
                self._connections.add(connection)
            connection.thread.start()

    def forget(self, connection: _Connection) -> None:
        """A connection's reader ended (that reader's thread)."""
        with self._lock:
            self._connections.discard(connection)

    def check_hello(self, hello: Hello) -> str | None:
        """Why this profile is not served, or None (connection threads, under the session's lock)."""
        name = hello.profile.namespace
        if not _NAMESPACE_NAME.match(name) or name in (".", ".."):
            return f"namespace {name!r} is not a <model>_<digest12> directory name"
        if hello.run_config is not None:
            try:
                parse_run_config(name, hello.run_config)
            except ValueError as exc:
                return str(exc)
        got, want = hello.profile.none_hash_fingerprint, self.expected_fingerprint
        if want is None or got == want:
            return None
        text = f"NONE_HASH fingerprint {got} differs from the agent's {want} (PYTHONHASHSEED differs?)"
        if self.on_mismatch_seen is not None:
            self.on_mismatch_seen(hello.instance_id, got, want, self.on_mismatch)
        if self.on_mismatch == "reject":
            log.warning("%s: %s; refusing the Hello (on_mismatch=reject)", hello.instance_id, text)
            return text
        log.warning("%s: %s; accepting (on_mismatch=warn)", hello.instance_id, text)
        return None

    def namespace(self, name: str, run_config: str | None = None) -> Namespace:
        """The Namespace of a checked namespace name under the root (connection threads).

        With the Hello's checked `run_config`, the namespace's config.json is written once, as vLLM would.
        """
        fields = parse_run_config(name, run_config) if run_config is not None else {}
        with self._lock:
            found = self._namespaces.get(name)
            first_fields = found is None or (bool(fields) and not found.fields)
            if first_fields:
                config_dir = self.root_dir / name
                digest = name.rsplit("_", 1)[1]
                found = Namespace(fields, digest, config_dir, config_dir.with_name(f"{name}_r0"))
                self._namespaces[name] = found
        assert found is not None
        if first_fields and fields:
            write_config_json(found)  # outside the lock: a slow volume must not stall other Hellos
        return found

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop accepting, say Goodbye to every connection and close it, bounded (the main thread).

        The tier is not shut down here; regions of jobs still in flight are unmapped when they end.
        """
        with self._lock:
            self._closed = True
            connections = list(self._connections)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for connection in connections:
            connection.send(Goodbye(reason="agent shutting down"))
            connection.alive = False
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)
        self._accept_thread.join(timeout_s)
        for connection in connections:
            connection.thread.join(timeout_s)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
