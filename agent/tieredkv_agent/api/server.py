"""The agent's side of the node socket API: a Unix socket server that runs vLLM instances' block jobs.

One `AgentServer` per agent, one `Connection` per instance (see `tieredkv_agent.api.connection`). Threads:

* `tkv-api-accept`: accepts connections, refuses those over `max_connections`, starts each one's reader
  and writer; it survives any failure (a thread that cannot start, EMFILE) and ends only at `close`;
* connection threads call `refuse`, `reserve_inflight`/`release_inflight`, `account_buffered`,
  `check_hello` and `namespace` (all under the server's lock, none waits for I/O under it);
* `close` runs on the agent's main thread and is bounded, whatever the clients do.

Limits (`AgentLimits`, defaults in `tieredkv_common.agent_limits`): every refusal is answered with an
Error, logged, and counted by reason (`refusal_counts`, exported as `tieredkv_api_refusals_total`).
One agent serves a socket path (`SocketLock`). See docs/protocol.md and docs/security.md.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tieredkv_agent.api.connection import Connection
from tieredkv_agent.api.framing import FrameEncoder
from tieredkv_agent.api.protocol import Error, ErrorCode, Goodbye, Hello
from tieredkv_agent.api.run_config import parse_run_config, write_config_json
from tieredkv_agent.api.session import Limits
from tieredkv_agent.api.socket_lock import SocketLock
from tieredkv_agent.engine.region import StagingCache
from tieredkv_agent.store.blocksize import existing_block_bytes
from tieredkv_agent.store.modes import DIR_MODE
from tieredkv_agent.store.naming import Namespace, blocks_dir_name, namespace_at, namespace_name_problem
from tieredkv_agent.tiers.base import Tier
from tieredkv_common import agent_limits

log = logging.getLogger(__name__)

MismatchSink = Callable[[str, str, str, str], None]
"""(instance id, offered fingerprint, expected fingerprint, "reject" or "warn")."""

SOCKET_MODE = 0o660
SOCKET_DIR_MODE = 0o770
ACCEPT_RETRY_S = 0.05
"""Pause after a failed accept or thread start, so that a persistent failure does not spin."""


@dataclass(frozen=True, slots=True)
class AgentLimits:
    """The agent-wide limits of the socket server (per-connection ones are `session.Limits`)."""

    max_connections: int = agent_limits.MAX_CONNECTIONS
    max_total_inflight_bytes: int = agent_limits.MAX_TOTAL_INFLIGHT_BYTES
    max_buffered_frame_bytes: int = agent_limits.MAX_BUFFERED_FRAME_BYTES
    buffered_frame_share_bytes: int = agent_limits.BUFFERED_FRAME_SHARE_BYTES
    max_region_bytes: int = agent_limits.MAX_REGION_BYTES
    max_send_queue_bytes: int = agent_limits.MAX_SEND_QUEUE_BYTES
    send_timeout_s: float = agent_limits.SEND_TIMEOUT_S
    max_idle_staging_bytes: int = agent_limits.MAX_IDLE_STAGING_BYTES

    def __post_init__(self) -> None:
        if min(self.max_connections, self.max_total_inflight_bytes, self.max_send_queue_bytes) < 1:
            raise ValueError("limits must be positive")
        if self.send_timeout_s <= 0:
            raise ValueError("send_timeout_s must be positive")


class AgentServer:
    """Serves the node socket API on `socket_path` for one tier."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        tier: Tier,
        *,
        agent_version: str,
        limits: Limits | None = None,
        agent_limits: AgentLimits | None = None,
        expected_fingerprint: str | None = None,
        on_mismatch: Literal["reject", "warn"] = "reject",
        root_dir: str | os.PathLike[str] | None = None,
        on_mismatch_seen: MismatchSink | None = None,
    ) -> None:
        """Lock the path, bind and listen, then start the accept thread (the agent's main thread).

        Raises `SocketPathError` when another agent serves the path or a non-socket occupies it.
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
        self.agent_limits = agent_limits or AgentLimits()
        self.expected_fingerprint = expected_fingerprint
        self.on_mismatch = on_mismatch
        self.on_mismatch_seen = on_mismatch_seen
        self.root_dir = Path(root)
        self._lock = threading.Lock()
        self._connections: set[Connection] = set()
        self._namespaces: dict[str, Namespace] = {}
        self._block_bytes: dict[str, int] = {}
        self._refusals = collections.Counter[str]()
        self._inflight_bytes = 0
        self._buffered_bytes = 0
        self._count = 0
        self._closed = False
        self.staging = StagingCache(self.agent_limits.max_idle_staging_bytes)
        """Staging buffers of finished jobs, reused by the next ones (connection threads)."""
        self._socket_lock = SocketLock(self.socket_path)
        self._listener, self._socket_identity = self._bind()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="tkv-api-accept", daemon=True)
        self._accept_thread.start()

    @property
    def closed(self) -> bool:
        """True once `close` began (any thread)."""
        return self._closed

    # the connections' view of the limits
    @property
    def max_region_bytes(self) -> int:
        return self.agent_limits.max_region_bytes

    @property
    def max_send_queue_bytes(self) -> int:
        return self.agent_limits.max_send_queue_bytes

    @property
    def send_timeout_s(self) -> float:
        return self.agent_limits.send_timeout_s

    def _bind(self) -> tuple[socket.socket, tuple[int, int, int]]:
        parent = self.socket_path.parent
        parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        parent.chmod(SOCKET_DIR_MODE)
        self._socket_lock.acquire()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._socket_lock.clear_stale()
            listener.bind(str(self.socket_path))
            self.socket_path.chmod(SOCKET_MODE)
            listener.listen(64)
            identity = _identity(os.lstat(self.socket_path))
        except BaseException:
            listener.close()
            self._socket_lock.release()
            raise
        return listener, identity

    def _accept_loop(self) -> None:
        """Accept connections until `close`; no failure ends it (the accept thread)."""
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError as exc:
                if self.closed or exc.errno in (errno.EBADF, errno.EINVAL):
                    return  # the listener is gone
                self.refuse("accept_error", f"accept failed: {exc}")
                time.sleep(ACCEPT_RETRY_S)
                continue
            try:
                self._admit(sock)
            except Exception as exc:
                self.refuse("accept_error", f"a connection could not be started: {exc!r}")
                with contextlib.suppress(OSError):
                    sock.close()
                time.sleep(ACCEPT_RETRY_S)
            if self.closed:
                return

    def _admit(self, sock: socket.socket) -> None:
        """Start a Connection, or refuse it over `max_connections` (the accept thread)."""
        with self._lock:
            if self._closed:
                sock.close()
                return
            full = len(self._connections) >= self.agent_limits.max_connections
            if not full:
                self._count += 1
                connection = Connection(self, sock, self._count)
                self._connections.add(connection)
        if full:
            limit = self.agent_limits.max_connections
            text = f"the agent serves {limit} connections already (its limit); try again later"
            self.refuse("connections", text)
            _refuse_socket(sock, Error(code=ErrorCode.OVERLOADED, message=text, fatal=True))
            return
        try:
            connection.start()
        except BaseException:
            self.forget(connection)
            raise

    def forget(self, connection: Connection) -> None:
        """A connection's reader ended (that reader's thread)."""
        with self._lock:
            self._connections.discard(connection)

    def refuse(self, reason: str, detail: str) -> None:
        """Count and log one refusal (any thread); `reason` is one of agent_limits.REFUSAL_REASONS."""
        if reason not in agent_limits.REFUSAL_REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        with self._lock:
            self._refusals[reason] += 1
        log.warning("refused (%s): %s", reason, detail)

    def refusal_counts(self) -> dict[str, int]:
        """Refusals so far by reason, every reason present (the metrics thread)."""
        with self._lock:
            return {reason: self._refusals[reason] for reason in agent_limits.REFUSAL_REASONS}

    def reserve_inflight(self, nbytes: int) -> bool:
        """Take `nbytes` of the agent-wide in-flight budget; False when it is spent (reader threads)."""
        with self._lock:
            if self._inflight_bytes + nbytes > self.agent_limits.max_total_inflight_bytes:
                return False
            self._inflight_bytes += nbytes
            return True

    def release_inflight(self, nbytes: int) -> None:
        """Give back what `reserve_inflight` took (whichever thread ends the job)."""
        with self._lock:
            self._inflight_bytes -= nbytes

    @property
    def inflight_bytes(self) -> int:
        return self._inflight_bytes

    def account_buffered(self, connection: Connection, buffered: int) -> bool:
        """Record a connection's partial-frame bytes; False (and the connection refused) when the agent's
        budget is spent and this connection holds more than its share (its reader thread)."""
        limits = self.agent_limits
        with self._lock:
            self._buffered_bytes += buffered - connection.buffered
            connection.buffered = buffered
            over = (
                self._buffered_bytes > limits.max_buffered_frame_bytes
                and buffered > limits.buffered_frame_share_bytes
            )
        if over:
            text = f"the agent's partial-frame budget is spent and this connection holds {buffered} bytes"
            self.refuse("buffered_bytes", f"{connection.name}: {text}")
            connection.send(Error(code=ErrorCode.OVERLOADED, message=text, fatal=True))
            self.account_buffered(connection, 0)
            connection.alive = False
        return not over

    def check_hello(self, hello: Hello) -> str | None:
        """Why this profile is not served, or None (connection threads, under the session's lock)."""
        name = hello.profile.namespace
        problem = namespace_name_problem(name)
        if problem is not None:
            self.refuse("namespace", problem)
            return problem
        if hello.run_config is not None:
            try:
                parse_run_config(name, hello.run_config)
            except ValueError as exc:
                return str(exc)
        problem = self._pin_block_bytes(name, hello.profile.block_bytes)
        if problem is not None:
            self.refuse("block_size", f"{hello.instance_id!r}: {problem}")
            return problem
        return self._check_fingerprint(hello)

    def _pin_block_bytes(self, name: str, block_bytes: int) -> str | None:
        """Pin the namespace's block size (the volume's blocks, else the first Hello); why it differs."""
        with self._lock:
            pinned = self._block_bytes.get(name)
        if pinned is None:
            found = existing_block_bytes(self.root_dir / blocks_dir_name(name))
            with self._lock:
                pinned = self._block_bytes.setdefault(name, found or block_bytes)
        if pinned == block_bytes:
            return None
        return (
            f"namespace {name!r} holds blocks of {pinned} bytes; this Hello declares {block_bytes} "
            "(a different model shape or KV dtype under the same name?)"
        )

    def _check_fingerprint(self, hello: Hello) -> str | None:
        got, want = hello.profile.none_hash_fingerprint, self.expected_fingerprint
        if want is None or got == want:
            return None
        text = f"NONE_HASH fingerprint {got} differs from the agent's {want} (PYTHONHASHSEED differs?)"
        if self.on_mismatch_seen is not None:
            self.on_mismatch_seen(hello.instance_id, got, want, self.on_mismatch)
        if self.on_mismatch == "reject":
            log.warning("%r: %s; refusing the Hello (on_mismatch=reject)", hello.instance_id, text)
            return text
        log.warning("%r: %s; accepting (on_mismatch=warn)", hello.instance_id, text)
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
                found = namespace_at(self.root_dir, name, fields)
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
        """Stop accepting, say Goodbye to every connection and close it, in bounded time (main thread).

        A client that does not read cannot hold this up: its Goodbye is dropped after `timeout_s`.
        The tier is not shut down here; the regions of jobs still in flight are closed when they end.
        """
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._closed = True
            connections = list(self._connections)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for connection in connections:
            connection.send(Goodbye(reason="agent shutting down"))
            connection.outbox.close()
        for connection in connections:
            connection.outbox.thread.join(max(0.0, deadline - time.monotonic()))
        for connection in connections:
            connection.kill("agent shutting down")
        self._accept_thread.join(max(0.1, deadline - time.monotonic()))
        for connection in connections:
            connection.thread.join(max(0.1, deadline - time.monotonic()))
        self._unlink_own_socket()
        self._socket_lock.release()

    def _unlink_own_socket(self) -> None:
        """Remove the socket unless another agent's socket replaced it (main thread, at close)."""
        if not self._socket_lock.held:
            return  # the path is no longer ours to clean up
        with contextlib.suppress(FileNotFoundError):
            if _identity(os.lstat(self.socket_path)) == self._socket_identity:
                self.socket_path.unlink()


def _identity(info: os.stat_result) -> tuple[int, int, int]:
    """What tells our socket file from another made at the same path later (inodes are reused)."""
    return info.st_dev, info.st_ino, info.st_ctime_ns


def _refuse_socket(sock: socket.socket, error: Error) -> None:
    """Send a refusal without waiting for the client, then close (the accept thread)."""
    try:
        sock.setblocking(False)
        sock.send(FrameEncoder().encode(error), socket.MSG_NOSIGNAL)
    except OSError:
        pass
    finally:
        sock.close()
