"""A compact, versioned membership summary of the volume's blocks, for routers that poll.

Per namespace directory, a Bloom filter of the block hashes whose files are on the volume:

    bits  m = max(1024, 10 x blocks) rounded up to a multiple of 64   (about 1% false positives)
    k = 4 positions per hash h (vLLM block hashes are uniform bytes, so no further hashing is needed):
          position_i = int.from_bytes(h[4i : 4i + 4], "big") % m      for i in 0..3

A walk of the volume's block file names (no stat, no read) rebuilds every filter; between walks the blocks
this agent stores are added (`BlockEvents` tells it), so a filter can only err towards "present" for a
block deleted since the last walk. Each walk bumps `version`.

HTTP (`GET`, on `events_summary_port`):

    /kv/summary                  JSON: version, generated_at, walk_seconds, and per namespace its model,
                                 blocks, bits, k and the path of its filter
    /kv/summary/<namespace>      the filter's bits, little-endian bit order within each byte (bit j of the
                                 filter is byte j // 8, mask 1 << (j % 8)); headers X-Tieredkv-Version, -Bits

Threads: the `tkv-summary` thread walks every `interval_s`; the HTTP server answers on its own threads;
`add` is called from the file tier's I/O threads. One lock guards the filters (swapped whole by a walk).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tieredkv_agent.store.naming import blocks_dir_name, parse_namespace_dir

K = 4
BITS_PER_BLOCK = 10
MIN_BITS = 1024


def bloom_bits(blocks: int) -> int:
    """The filter size for `blocks` entries: at least MIN_BITS, a multiple of 64."""
    bits = max(MIN_BITS, BITS_PER_BLOCK * blocks)
    return (bits + 63) // 64 * 64


def positions(block_hash: bytes, bits: int) -> list[int]:
    """The K bit positions of a block hash (which must have at least 4 K bytes)."""
    return [int.from_bytes(block_hash[4 * i : 4 * i + 4], "big") % bits for i in range(K)]


class Bloom:
    """A fixed-size Bloom filter of block hashes (not thread-safe: `MembershipSummary` locks it)."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.data = bytearray(bits // 8)

    def add(self, block_hash: bytes) -> None:
        for p in positions(block_hash, self.bits):
            self.data[p >> 3] |= 1 << (p & 7)

    def __contains__(self, block_hash: bytes) -> bool:
        return all(self.data[p >> 3] & (1 << (p & 7)) for p in positions(block_hash, self.bits))


@dataclass(slots=True)
class NamespaceFilter:
    model: str
    blocks: int
    bloom: Bloom


Walked = dict[tuple[str, int], list[bytes]]
"""Block hashes by (namespace directory name, KV-cache group)."""


def walk_block_hashes(root: Path) -> Walked:
    """Block hashes by namespace directory and group, from the file names under `root` (no stat)."""
    out: Walked = {}
    for blocks_dir in _dirs(root):
        parsed = parse_namespace_dir(blocks_dir.name)
        if parsed is None or parsed[1] != 0:  # vLLM's scheduler-side tiers write only rank 0
            continue
        _walk_blocks_dir(blocks_dir, parsed[0], out)
    return out


def walk_namespace(root: Path, namespace: str) -> Walked:
    """The same for one namespace directory name (its rank-0 blocks directory) only."""
    out: Walked = {}
    _walk_blocks_dir(root / blocks_dir_name(namespace), namespace, out)
    return {key: hashes for key, hashes in out.items() if hashes}


def _walk_blocks_dir(blocks_dir: Path, namespace: str, out: Walked) -> None:
    for prefix in _dirs(blocks_dir):
        for leaf in _dirs(prefix):
            group = leaf.name.partition("_g")[2]
            if not group.isdigit():
                continue
            hashes = out.setdefault((namespace, int(group)), [])
            try:
                with os.scandir(leaf) as entries:
                    names = [entry.name for entry in entries]
            except FileNotFoundError:  # GC removed the directory meanwhile
                continue
            for name in names:
                if name.endswith(".bin") and name.startswith(prefix.name):
                    try:
                        hashes.append(bytes.fromhex(name[:-4]))
                    except ValueError:
                        continue


def _dirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as entries:
            return [
                Path(e.path)
                for e in entries
                if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")
            ]
    except FileNotFoundError:
        return []


class MembershipSummary:
    """The summary of one cache's volume, rebuilt by walks, served over HTTP."""

    def __init__(self, root: Path, models: dict[str, str] | None = None) -> None:
        self.root = root
        self.on_walk: Callable[[Walked], None] | None = None
        """Hears every walk's result (the tkv-summary thread): the `announce.WalkAnnouncer`."""
        self.before_walk: Callable[[], None] | None = None
        """Called as each walk begins (the tkv-summary thread): `WalkAnnouncer.before_walk`."""
        self.version = 0
        self.generated_at = 0.0
        self.walk_seconds = 0.0
        self._models = models if models is not None else {}
        self._filters: dict[str, NamespaceFilter] = {}
        self._lock = threading.Lock()

    def rebuild(self) -> None:
        """Walk the volume and replace every filter (the tkv-summary thread)."""
        if self.before_walk is not None:
            self.before_walk()
        started = time.monotonic()
        walked = walk_block_hashes(self.root)
        by_namespace: dict[str, list[list[bytes]]] = {}
        for (name, _), hashes in walked.items():
            by_namespace.setdefault(name, []).append(hashes)
        filters: dict[str, NamespaceFilter] = {}
        for name, groups in by_namespace.items():
            count = sum(map(len, groups))
            bloom = Bloom(bloom_bits(count))
            for hashes in groups:
                for block_hash in hashes:
                    bloom.add(block_hash)
            filters[name] = NamespaceFilter(self._model(name), count, bloom)
        with self._lock:
            self._filters = filters
            self.version += 1
            self.generated_at = time.time()
            self.walk_seconds = time.monotonic() - started
        if self.on_walk is not None:
            self.on_walk(walked)

    def add(self, namespace: str, block_hash: bytes) -> None:
        """A block this agent stored since the walk (file-tier I/O threads); unknown namespaces wait."""
        with self._lock:
            entry = self._filters.get(namespace)
            if entry is not None:
                entry.bloom.add(block_hash)
                entry.blocks += 1

    def contains(self, namespace: str, block_hash: bytes) -> bool:
        with self._lock:
            entry = self._filters.get(namespace)
            return entry is not None and block_hash in entry.bloom

    def index(self) -> dict[str, object]:
        """The JSON index (HTTP threads)."""
        with self._lock:
            spaces = {
                name: {
                    "model": f.model,
                    "blocks": f.blocks,
                    "bits": f.bloom.bits,
                    "k": K,
                    "path": f"/kv/summary/{name}",
                }
                for name, f in self._filters.items()
            }
            return {
                "version": self.version,
                "generated_at": self.generated_at,
                "walk_seconds": round(self.walk_seconds, 3),
                "namespaces": spaces,
            }

    def bits(self, namespace: str) -> tuple[int, int, bytes] | None:
        """(version, bits, filter bytes) of a namespace, or None (HTTP threads)."""
        with self._lock:
            entry = self._filters.get(namespace)
            return None if entry is None else (self.version, entry.bloom.bits, bytes(entry.bloom.data))

    def _model(self, name: str) -> str:
        model = self._models.get(name)
        if model is not None:
            return model
        try:
            fields = json.loads((self.root / name / "config.json").read_text(encoding="utf-8"))
            if isinstance(fields, dict) and isinstance(fields.get("model_name"), str):
                return str(fields["model_name"])
        except (OSError, ValueError):
            pass
        return name[:-13]
