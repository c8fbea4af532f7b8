"""The modes of everything the agent creates on the volume and beside its socket, whatever the umask.

The process umask is not ours to trust (a container runtime or a base image may set 0 or 077), so every
directory and file the agent creates gets its mode set explicitly after creation (`chmod`/`fchmod`).

    DIR_MODE   0o755  namespace, prefix and leaf directories: every agent and native vLLM pod of the
                      cache runs as the cache's user, others may list (the names are hashes)
    FILE_MODE  0o644  block files and config.json: readable by the cache's readers, written once

Called from any thread that creates files (I/O workers, connection threads, the startup thread).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o755
FILE_MODE = 0o644


def make_dirs(path: str | os.PathLike[str], *, chmod: bool = True) -> None:
    """Create `path` and missing parents, each new one with DIR_MODE exactly.

    `chmod=False` when the caller knows the umask keeps DIR_MODE (`store.syscalls.umask_keeps`): mkdir's
    mode is then exact already, and the chmod per directory is saved. The deepest directory is tried first
    (one mkdir when only the leaf is missing, the common case for a new block; each stat saved is a round
    trip on a network volume); a missing parent is made the same way, then the child again.
    """
    target = Path(path)
    try:
        target.mkdir(mode=DIR_MODE)
    except FileExistsError:
        return  # there already, or another writer created it meanwhile; its mode is its creator's
    except FileNotFoundError:
        if target.parent == target:
            raise
        make_dirs(target.parent, chmod=chmod)
        try:
            target.mkdir(mode=DIR_MODE)
        except FileExistsError:
            return
    if chmod:
        with contextlib.suppress(OSError):
            target.chmod(DIR_MODE)


def set_file_mode(fd: int) -> None:
    """Give a file just created through `fd` FILE_MODE exactly."""
    os.fchmod(fd, FILE_MODE)
