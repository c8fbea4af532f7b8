"""The block size a namespace already holds on the volume: the size of any one of its block files.

Block files are published whole (temp file, then link or rename), so every `.bin` of a namespace has the
namespace's block size; the socket server pins a namespace to it so that a client declaring another size
is refused instead of reading valid blocks as short (and deleting them).

Called on a connection's reader thread, once per namespace per agent start; it stops at the first block.
"""

from __future__ import annotations

import os
from pathlib import Path

BLOCK_SUFFIX = ".bin"


def existing_block_bytes(blocks_dir: Path) -> int | None:
    """The size of the first block file found under `<blocks_dir>/<h[0:3]>/<h[3:5]>_g<g>/`; None if none."""
    try:
        prefixes = os.scandir(blocks_dir)
    except OSError:
        return None
    with prefixes:
        for prefix in prefixes:
            found = _first_in_prefix(prefix)
            if found is not None:
                return found
    return None


def _first_in_prefix(prefix: os.DirEntry[str]) -> int | None:
    if not prefix.is_dir(follow_symlinks=False):
        return None
    try:
        leaves = os.scandir(prefix.path)
    except OSError:
        return None
    with leaves:
        for leaf in leaves:
            if not leaf.is_dir(follow_symlinks=False):
                continue
            try:
                with os.scandir(leaf.path) as files:
                    for entry in files:
                        if entry.name.endswith(BLOCK_SUFFIX) and entry.is_file(follow_symlinks=False):
                            size = entry.stat(follow_symlinks=False).st_size
                            if size > 0:
                                return size
            except OSError:
                continue
    return None
