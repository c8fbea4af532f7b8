"""Which entries of a cache volume belong to the block layout, and what each one is.

Pure functions over names (no I/O), safe from any thread. The layout, as vLLM's `fs` tier and the
agent write it (see `tieredkv_agent.store.naming`)::

    <root>/<model>_<digest12>/config.json                      config directory (never touched)
    <root>/<model>_<digest12>_r<rank>/<h[0:3]>/<h[3:5]>_g<group>/<h>.bin       block
    ...                                        /<h>.bin_<decimal>[_w<tag>].tmp temp file of a store
    <root>/.o_direct_probe_<n>.tmp, <root>/<namespace dir>/.o_direct_probe_<n>.tmp   O_DIRECT probe
    <root>/.tieredkv-gc.lock                                    the local leader lock
    <root>/.tieredkv-writers/<tag>.lock                         live writers (`store.writers`)

Anything else is *unknown*: the capacity manager reports it and never deletes it.
"""

import enum
import re

from tieredkv_agent.store.blockio import TEMP_SUFFIX
from tieredkv_agent.store.naming import parse_namespace_dir
from tieredkv_agent.store.writers import WRITERS_DIR_NAME

LOCK_FILE_NAME = ".tieredkv-gc.lock"
"""The file `FileLockElector` locks in the volume root; part of the layout, never reported."""

ROOT_ENTRIES = frozenset({LOCK_FILE_NAME, WRITERS_DIR_NAME})
"""Entries of the root that belong to the agent: the leader lock and the writers' lock directory."""

CONFIG_FILE_NAME = "config.json"
BLOCK_SUFFIX = ".bin"

_HEX = "0-9a-f"
_PREFIX_DIR = re.compile(rf"[{_HEX}]{{3}}")
_LEAF_DIR = re.compile(rf"[{_HEX}]{{2}}_g\d+")
_HEX_NAME = re.compile(rf"[{_HEX}]{{5,}}")
_BLOCK_TEMP = re.compile(rf"[{_HEX}]{{5,}}\.bin_\d+(?:_w[{_HEX}]{{16}})?{re.escape(TEMP_SUFFIX)}")
_PROBE_TEMP = re.compile(rf"\.o_direct_probe_\w+{re.escape(TEMP_SUFFIX)}")


class Kind(enum.Enum):
    """What a file inside a leaf directory (`<h[0:3]>/<h[3:5]>_g<group>/`) is."""

    BLOCK = "block"
    TEMP = "temp"
    UNKNOWN = "unknown"


def namespace_base(dir_name: str) -> str | None:
    """`<model>_<digest12>` of a config or blocks directory name; None if the name is neither."""
    parsed = parse_namespace_dir(dir_name)
    return parsed[0] if parsed else None


def is_blocks_dir(dir_name: str) -> bool:
    """True for `<model>_<digest12>_r<rank>` (the directory that holds block files)."""
    parsed = parse_namespace_dir(dir_name)
    return parsed is not None and parsed[1] is not None


def is_config_dir(dir_name: str) -> bool:
    """True for `<model>_<digest12>` (the directory that holds only config.json)."""
    parsed = parse_namespace_dir(dir_name)
    return parsed is not None and parsed[1] is None


def is_prefix_dir(dir_name: str) -> bool:
    """True for the first hash level, `<h[0:3]>`."""
    return _PREFIX_DIR.fullmatch(dir_name) is not None


def is_leaf_dir(dir_name: str) -> bool:
    """True for `<h[3:5]>_g<group>` (the shape only; `classify_leaf_file` checks the names inside)."""
    return _LEAF_DIR.fullmatch(dir_name) is not None


def is_probe_temp(file_name: str) -> bool:
    """True for an O_DIRECT probe file (vLLM's or the agent's), in the root or a namespace directory."""
    return _PROBE_TEMP.fullmatch(file_name) is not None


def leaf_stem(prefix: str, leaf: str) -> str:
    """The first five hex digits every file name in `<prefix>/<leaf>/` must start with."""
    return prefix + leaf[0:2]


def classify_leaf_file(stem: str, file_name: str) -> Kind:
    """BLOCK, TEMP or UNKNOWN for a file in a leaf directory whose names start with `stem`."""
    if not file_name.startswith(stem):
        return Kind.UNKNOWN
    if file_name.endswith(BLOCK_SUFFIX):
        return Kind.BLOCK if _HEX_NAME.fullmatch(file_name, 0, len(file_name) - 4) else Kind.UNKNOWN
    return Kind.TEMP if _BLOCK_TEMP.fullmatch(file_name) else Kind.UNKNOWN
