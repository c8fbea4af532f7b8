"""One agent per socket path: a lock file beside the socket, held for the agent's life.

    <socket dir>/agent.sock        the socket
    <socket dir>/agent.sock.lock   flock(LOCK_EX) by the serving agent; holds its pid for humans

A second agent finds the lock held and stops with `SocketPathError` before touching the socket; a socket
left by an agent that died is stale once its lock is free (the kernel drops a dead process's flock), so
the new holder may replace it. Anything at the path that is not a socket is never removed. The lock file
itself is never unlinked (unlinking it would let two agents lock two different files).

Threads: the agent's main thread only (start-up and shutdown).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path

LOCK_MODE = 0o660


class SocketPathError(Exception):
    """The socket path is served by another agent, or occupied by something that is not a socket."""


class SocketLock:
    """The lock of one socket path (acquire once, release at shutdown)."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.path = socket_path.with_name(socket_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise SocketPathError naming the holder (main thread)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, LOCK_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise SocketPathError(
                f"another agent (pid {holder}) serves {self.socket_path}; one agent per socket path"
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.fchmod(fd, LOCK_MODE)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def clear_stale(self) -> None:
        """Remove a socket left by a dead agent; SocketPathError if the path holds anything else."""
        try:
            info = os.lstat(self.socket_path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            kind = "directory" if stat.S_ISDIR(info.st_mode) else "file that is not a socket"
            raise SocketPathError(
                f"{self.socket_path} exists and is a {kind}; remove it or choose another path"
            )
        self.socket_path.unlink()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (main thread, after the socket was unlinked)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
