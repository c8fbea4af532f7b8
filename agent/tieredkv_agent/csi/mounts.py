"""Read-only bind mounts for the CSI node plugin: mount(2) and umount2(2) through libc, and a mount check.

Needs CAP_SYS_ADMIN in the mount namespace whose mounts the kubelet sees (docs/security.md says why the
plugin's container is privileged and its kubelet pods directory is mounted with Bidirectional propagation).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND = 0x20, 0x1000
MNT_DETACH = 0x2

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def bind_read_only(source: str, target: str) -> None:
    """Bind `source` (a directory) at `target`, then make that mount read-only, nosuid, nodev, noexec."""
    _check(_libc.mount(source.encode(), target.encode(), None, MS_BIND, None), f"bind {source} at {target}")
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    try:
        _check(_libc.mount(None, target.encode(), None, flags, None), f"remount {target} read-only")
    except OSError:
        unmount(target)
        raise


def unmount(target: str) -> None:
    """Unmount `target` (lazily: a pod's process that still holds the directory does not block it)."""
    _check(_libc.umount2(target.encode(), MNT_DETACH), f"unmount {target}")


def is_mount_point(path: str) -> bool:
    """Whether `path` is a mount point in this process's mount namespace (from /proc/self/mountinfo)."""
    wanted = os.path.realpath(path)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if len(fields) > 4 and _unescape(fields[4]) == wanted:
            return True
    return False


def same_directory(a: str, b: str) -> bool:
    """Whether two paths are the same directory (a bind mount shows its source's device and inode)."""
    try:
        sa, sb = Path(a).stat(), Path(b).stat()
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as three octal digits."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)
