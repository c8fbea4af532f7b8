"""A directory no process can write, root included: a read-only tmpfs mount, else permission bits."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def read_only_dir(path: Path) -> Iterator[Path]:
    """Create `path` and make it unwritable for the duration; skip the test where that is impossible."""
    path.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)]
    mounted = subprocess.run(mount, capture_output=True, check=False).returncode == 0
    if not mounted:
        path.chmod(stat.S_IRUSR | stat.S_IXUSR)
        if os.access(path, os.W_OK):
            path.chmod(stat.S_IRWXU)
            pytest.skip("cannot make a directory unwritable here (root without mount)")
    try:
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=False)
        else:
            path.chmod(stat.S_IRWXU)
