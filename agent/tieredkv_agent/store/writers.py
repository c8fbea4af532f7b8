"""Which writer left a temp file, and whether that writer is provably gone.

Every agent process registers as a writer when it starts: it picks a random 64-bit tag, creates
`<root>/.tieredkv-writers/<tag>.lock` and holds `flock(LOCK_EX)` on it for its whole life. Its stores name
their temp files `<block>.bin_<random>_w<tag>.tmp`. The kernel (or the NFS server) drops the lock when the
process dies, however it dies, so at start-up the new agent can prove a writer gone: its lock file can be
locked. `sweep_dead_writers` then deletes every temp file carrying a dead tag at once, instead of waiting
for the GC's temp timeout, and the dead lock files after them.

A volume without working locks (flock fails with ENOLCK, EOPNOTSUPP, ...) proves nothing: the agent then
tags nothing and leaves every temp file to the timeout, as vLLM's own untagged temp files always are.

Threads: `register` on the agent's startup thread; `sweep_dead_writers` on a one-shot start-up thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from tieredkv_agent.store.modes import DIR_MODE, FILE_MODE
from tieredkv_agent.store.naming import parse_namespace_dir

log = logging.getLogger(__name__)

WRITERS_DIR_NAME = ".tieredkv-writers"
"""In the volume root: one lock file per agent process that may be writing."""
LOCK_SUFFIX = ".lock"
TAG_HEX_DIGITS = 16
TEMP_TAG = re.compile(rf"_w(?P<tag>[0-9a-f]{{{TAG_HEX_DIGITS}}})\.tmp$")
"""The writer tag at the end of a temp file name."""


def temp_tag(file_name: str) -> str | None:
    """The writer tag of a tagged temp file name, else None."""
    match = TEMP_TAG.search(file_name)
    return match.group("tag") if match else None


class WriterRegistration:
    """This process's writer lock; keep it referenced for the process's life (closing it releases it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.directory = root / WRITERS_DIR_NAME
        self.tag = ""
        self._fd: int | None = None

    def register(self) -> str:
        """Create and lock this process's lock file; the tag, or "" when the volume cannot lock."""
        tag = secrets.token_hex(TAG_HEX_DIGITS // 2)
        try:
            with contextlib.suppress(FileExistsError):
                self.directory.mkdir(mode=DIR_MODE)
                self.directory.chmod(DIR_MODE)
            fd = os.open(
                self.directory / f"{tag}{LOCK_SUFFIX}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE
            )
        except OSError as exc:
            log.warning(
                "cannot register as a writer in %s (%s); temp files are left to GC", self.directory, exc
            )
            return ""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                (self.directory / f"{tag}{LOCK_SUFFIX}").unlink()
            log.warning("the volume cannot lock (%s); temp files of dead writers are left to GC", exc)
            return ""
        self._fd, self.tag = fd, tag
        return tag

    def close(self) -> None:
        """Release the lock and remove the lock file (the agent's main thread, at shutdown)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            (self.directory / f"{self.tag}{LOCK_SUFFIX}").unlink()
        os.close(self._fd)
        self._fd = None


@dataclass(frozen=True, slots=True)
class SweepReport:
    dead_writers: int
    temp_files: int
    temp_bytes: int
    duration_s: float


def dead_writer_tags(directory: Path, own_tag: str) -> dict[str, int]:
    """Tag -> locked descriptor of every registered writer whose lock could be taken (it is gone).

    The caller holds those locks until it has swept their temp files, so a writer cannot reuse a tag
    meanwhile (tags are random anyway), then passes them to `forget_writers`.
    """
    dead: dict[str, int] = {}
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return dead
    for entry in entries:
        tag = entry.name.removesuffix(LOCK_SUFFIX)
        if tag == own_tag or not entry.name.endswith(LOCK_SUFFIX) or len(tag) != TAG_HEX_DIGITS:
            continue
        try:
            fd = os.open(entry.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # held: that writer lives
            continue
        dead[tag] = fd
    return dead


def forget_writers(directory: Path, dead: dict[str, int]) -> None:
    """Remove swept writers' lock files, then drop the locks."""
    for tag, fd in dead.items():
        with contextlib.suppress(OSError):
            (directory / f"{tag}{LOCK_SUFFIX}").unlink()
        os.close(fd)


def sweep_dead_writers(root: Path, own_tag: str) -> SweepReport:
    """Delete the temp files of every writer proven gone, whatever their age (a start-up thread)."""
    started = time.monotonic()
    directory = root / WRITERS_DIR_NAME
    dead = dead_writer_tags(directory, own_tag)
    files = nbytes = 0
    if dead:
        for path in _temp_files(root):
            tag = temp_tag(path.rpartition("/")[2])
            if tag is None or tag not in dead:
                continue
            try:
                size = Path(path).stat(follow_symlinks=False).st_size
                Path(path).unlink()
            except OSError:
                continue
            files += 1
            nbytes += size
        forget_writers(directory, dead)
    return SweepReport(len(dead), files, nbytes, time.monotonic() - started)


def _temp_files(root: Path) -> list[str]:
    """Every `*.tmp` file three levels under a blocks directory (`<ns>_r<k>/<p>/<leaf>/`)."""
    found: list[str] = []
    for namespace in _subdirs(str(root)):
        parsed = parse_namespace_dir(namespace.rpartition("/")[2])
        if parsed is None or parsed[1] is None:
            continue
        for prefix in _subdirs(namespace):
            for leaf in _subdirs(prefix):
                with contextlib.suppress(OSError), os.scandir(leaf) as files:
                    found.extend(entry.path for entry in files if entry.name.endswith(".tmp"))
    return found


def _subdirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return [entry.path for entry in entries if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return []
