"""Walk a namespace's blocks directory and yield the offload key of every published block file.

Only `<h[0:3]>/<h[3:5]>_g<group>/<h>.bin` names count; temp files (`*.tmp`) and anything else are
skipped. Runs on the index's scan thread; listing errors skip a directory with a warning.
"""

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from tieredkv_agent.store.naming import GROUP_SUFFIX_BYTES

log = logging.getLogger(__name__)


def block_keys(blocks_dir: Path) -> Iterator[bytes]:
    """Offload keys of the `<h[0:3]>/<h[3:5]>_g<group>/<h>.bin` files under `blocks_dir`, lazily."""
    for top in _subdirs(blocks_dir):
        for mid in _subdirs(Path(top.path)):
            hash_part, sep, group = mid.name.partition("_g")
            if not sep or not group.isdigit():
                continue
            suffix = int(group).to_bytes(GROUP_SUFFIX_BYTES, "big")
            stem_prefix = top.name + hash_part
            for entry in _entries(Path(mid.path)):
                name = entry.name
                if name.endswith(".bin") and name.startswith(stem_prefix):
                    try:
                        yield bytes.fromhex(name[:-4]) + suffix
                    except ValueError:
                        continue


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        log.warning("index scan skipped %s: %s", directory, exc)
        return []


def _subdirs(directory: Path) -> list[os.DirEntry[str]]:
    return [entry for entry in _entries(directory) if entry.is_dir(follow_symlinks=False)]
