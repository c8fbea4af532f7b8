"""Processes the dev cluster started, recorded on disk so that stopping signals only those.

A PID alone can be reused by an unrelated process after ours exits, so each record also carries the
process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat); a record only matches a
live process when both agree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any


def start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces or parentheses: split after its closing ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    ticks: int
    log: str

    def alive(self) -> bool:
        """True while the recorded process (same PID and same start time) runs and is not a zombie."""
        if start_ticks(self.pid) != self.ticks:
            return False
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state != "Z"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessRecord:
        return cls(name=data["name"], pid=int(data["pid"]), ticks=int(data["ticks"]), log=data["log"])


def spawn(
    name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
    """Start `argv` in its own session (so a terminal's ^C does not reach it), output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out: IO[bytes] = log.open("ab")
    try:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
    finally:
        out.close()
    ticks = start_ticks(proc.pid)
    if ticks is None:
        raise RuntimeError(f"{name} exited at once; see {log}")
    return proc, ProcessRecord(name=name, pid=proc.pid, ticks=ticks, log=str(log))


def stop(record: ProcessRecord, timeout: float = 15.0, group: bool = False) -> None:
    """SIGTERM the recorded process (its whole process group if `group`), SIGKILL after `timeout`."""
    if not record.alive():
        return

    def send(sig: signal.Signals) -> None:
        (os.killpg if group else os.kill)(record.pid, sig)

    try:
        send(signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(record.pid)
        if not record.alive():
            _reap(record.pid)
            return
        time.sleep(0.05)
    try:
        send(signal.SIGKILL)
    except ProcessLookupError:
        return
    while record.alive():
        _reap(record.pid)
        time.sleep(0.05)
    _reap(record.pid)


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie (no-op otherwise)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
