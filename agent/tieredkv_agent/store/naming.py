"""Where vLLM's `fs` tier puts things: namespace directories, offload keys and block paths.

Everything here is pure (no I/O except `ensure_namespace`) and thread-safe: the agent's I/O worker
threads call `block_path` once per block, the startup thread builds the `Namespace` once.

Layout, byte-identical to vLLM's FileMapper::

    <root>/<safe_model>_<digest12>/config.json
    <root>/<safe_model>_<digest12>_r<rank>/<h[0:3]>/<h[3:5]>_g<group>/<h>.bin

`digest12` is the first 12 hex digits of sha256 over the canonical JSON of the run-config fields. Which
fields exist depends on the vLLM release line (`FieldSchema`, from the line table in
`tieredkv_common.vllm_lines`, which names each schema's keys); the rank is 0 for everything the
scheduler-side tier writes.
"""

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tieredkv_agent.store.modes import FILE_MODE, make_dirs
from tieredkv_common.vllm_facts import NAMING_FIELDS, FieldSchema
from tieredkv_common.vllm_lines import FIRST_TIERED_RELEASE, parse_release

__all__ = [
    "FIRST_TIERED_RELEASE",
    "GROUP_SUFFIX_BYTES",
    "FieldSchema",
    "KvCacheGroup",
    "Namespace",
    "RunConfig",
    "block_path",
    "block_relpath",
    "chunk_offload_keys",
    "config_digest",
    "config_json_text",
    "ensure_namespace",
    "make_offload_key",
    "namespace_at",
    "namespace_for",
    "namespace_name_problem",
    "parse_namespace_dir",
    "parse_vllm_release",
    "run_config_fields",
    "safe_model_name",
    "split_offload_key",
]

GROUP_SUFFIX_BYTES = 4
"""An offload key is the block hash followed by the KV-cache group index as 4 big-endian bytes."""


def parse_vllm_release(version: str) -> tuple[int, int]:
    """`"0.28.1"`, `"0.29.0rc1"`, `"0.33.0+cu128"` -> (major, minor); ValueError if unparsable or too old."""
    return parse_release(version)


@dataclass(frozen=True, slots=True)
class KvCacheGroup:
    """One offloaded KV-cache group: tokens per GPU block and its attention layer names, in order."""

    tokens_per_block: int
    layer_names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RunConfig:
    """The serving settings vLLM hashes into the namespace digest.

    Sizes are the real parallel sizes; `run_config_fields` writes 1 for them when `parallel_agnostic`.
    `dtype` is the string vLLM puts in the digest: the resolved KV dtype on the current schema
    (`"bfloat16"`, `"fp8"`), the raw `cache_dtype` (usually `"auto"`) on the legacy one. A leading
    `torch.` is dropped.
    """

    model_name: str
    tokens_per_hash: int
    blocks_per_file: int
    dtype: str
    kv_cache_groups: tuple[KvCacheGroup, ...]
    tp_size: int = 1
    pp_size: int = 1
    pcp_size: int = 1
    dcp_size: int = 1
    parallel_agnostic: bool = False
    replicated_layout: bool = False
    canonical_format: str | None = None
    schema: FieldSchema = FieldSchema.CURRENT

    def __post_init__(self) -> None:
        if not NAMING_FIELDS[self.schema].markers and (self.replicated_layout or self.canonical_format):
            raise ValueError("replicated_layout and canonical_format do not exist on the legacy schema")


def run_config_fields(config: RunConfig) -> dict[str, object]:
    """The exact dict vLLM digests (and writes to config.json) for this config and schema."""
    sizes = (config.tp_size, config.pp_size, config.pcp_size, config.dcp_size)
    tp, pp, pcp, dcp = (1, 1, 1, 1) if config.parallel_agnostic else sizes
    fields: dict[str, object] = {
        "model_name": config.model_name,
        "tp_size": tp,
        "pp_size": pp,
        "pcp_size": pcp,
        "dcp_size": dcp,
        "dtype": config.dtype.removeprefix("torch."),
        "inference_engine": "vllm",
    }
    names = NAMING_FIELDS[config.schema]
    fields[names.tokens_per_hash] = config.tokens_per_hash
    fields[names.blocks_per_file] = config.blocks_per_file
    fields["kv_cache_groups"] = [
        {names.group_tokens_per_block: group.tokens_per_block, "layer_names": list(group.layer_names)}
        for group in config.kv_cache_groups
    ]
    if names.markers:
        if not config.parallel_agnostic:
            fields["parallel_agnostic"] = False
        if config.replicated_layout:
            fields["replicated_layout"] = True
        if config.canonical_format:
            fields["canonical_format"] = config.canonical_format
    return fields


def config_digest(fields: dict[str, object]) -> str:
    """12 hex digits of sha256 over the compact, key-sorted, ASCII JSON of `fields`."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def safe_model_name(model_name: str) -> str:
    """The model string as a directory name: only `/` is replaced (by `_`)."""
    return model_name.replace("/", "_")


@dataclass(frozen=True, slots=True)
class Namespace:
    """The two directories of one run config under a cache root."""

    fields: dict[str, object]
    digest: str
    config_dir: Path
    """`<root>/<safe_model>_<digest>`: holds only config.json."""
    blocks_dir: Path
    """`<config_dir>_r<rank>`: the sibling directory that holds the block files."""

    def block_path(self, key: bytes) -> str:
        """The block file of an offload key; see the module-level `block_path`."""
        return block_path(self.blocks_dir, key)


BLOCKS_RANK = 0
"""The rank of every blocks directory the scheduler-side tier writes (see `namespace_for`)."""
MAX_DIR_NAME_BYTES = 255
_DIGEST_DIGITS = 12
_NAMESPACE_DIR = re.compile(r"(?P<base>.+_[0-9a-f]{12})(?:_r(?P<rank>[0-9]+))?", re.DOTALL)
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f/]")


def blocks_dir_name(base: str, rank: int = BLOCKS_RANK) -> str:
    """`<safe_model>_<digest12>_r<rank>`: the directory that holds a namespace's block files."""
    return f"{base}_r{rank}"


def parse_namespace_dir(dir_name: str) -> tuple[str, int | None] | None:
    """(`<model>_<digest12>`, rank or None) of a config (rank None) or blocks directory name; else None."""
    match = _NAMESPACE_DIR.fullmatch(dir_name)
    if match is None:
        return None
    rank = match.group("rank")
    return match.group("base"), None if rank is None else int(rank)


def namespace_name_problem(name: str) -> str | None:
    """Why `name` is no `<safe_model>_<digest12>` namespace this agent serves, or None.

    Besides the shape: no `/`, NUL or other control character (a newline would forge log lines and
    escape GC's name matching), not `.` or `..`, and short enough that its blocks directory name fits.
    """
    parsed = parse_namespace_dir(name)
    if parsed is None or parsed[1] is not None or name in (".", ".."):
        return f"namespace {name!r} is not a <model>_<digest12> directory name"
    if _FORBIDDEN.search(name) or name.startswith("."):
        return f"namespace {name!r} contains a control character, '/', or starts with '.'"
    if len(blocks_dir_name(name).encode("utf-8", "surrogateescape")) > MAX_DIR_NAME_BYTES:
        return f"namespace {name[:40]!r}... is too long for a directory name"
    return None


def namespace_at(root: str | os.PathLike[str], name: str, fields: dict[str, object]) -> Namespace:
    """The Namespace of a checked namespace directory name under `root` (see `namespace_name_problem`)."""
    config_dir = Path(root) / name
    return Namespace(fields, name[-_DIGEST_DIGITS:], config_dir, config_dir.with_name(blocks_dir_name(name)))


def namespace_for(root: str | os.PathLike[str], config: RunConfig, *, rank: int = 0) -> Namespace:
    """The namespace of `config` under `root`; `rank` is forced to 0 when parallel-agnostic.

    vLLM's fs tier runs in the scheduler process, so every block it writes lives under `_r0`; a
    rank other than 0 only exists for vLLM's own FileMapper tests.
    """
    fields = run_config_fields(config)
    digest = config_digest(fields)
    base = Path(root) / f"{safe_model_name(config.model_name)}_{digest}"
    effective_rank = 0 if config.parallel_agnostic else rank
    return Namespace(fields, digest, base, base.with_name(blocks_dir_name(base.name, effective_rank)))


def config_json_text(fields: dict[str, object]) -> str:
    """config.json as vLLM writes it: indent 2, sorted keys, no trailing newline."""
    return json.dumps(fields, indent=2, sort_keys=True)


def ensure_namespace(namespace: Namespace) -> bool:
    """Create the config directory and write config.json unless it exists; True if this call wrote it.

    Called once from the agent's startup thread. The file is informative only (nothing reads it
    back), so like vLLM the first writer wins; the exclusive create keeps two writers from mixing.
    """
    make_dirs(namespace.config_dir)
    try:
        with (namespace.config_dir / "config.json").open("x", encoding="ascii") as out:
            os.fchmod(out.fileno(), FILE_MODE)
            out.write(config_json_text(namespace.fields))
    except FileExistsError:
        return False
    return True


def make_offload_key(block_hash: bytes, group_idx: int) -> bytes:
    """Block hash bytes followed by the group index as 4 big-endian unsigned bytes."""
    return bytes(block_hash) + group_idx.to_bytes(GROUP_SUFFIX_BYTES, "big", signed=False)


def split_offload_key(key: bytes) -> tuple[bytes, int]:
    """(block hash, group index) of an offload key; ValueError if there is no hash part."""
    if len(key) <= GROUP_SUFFIX_BYTES:
        raise ValueError(f"offload key of {len(key)} bytes has no block hash")
    return key[:-GROUP_SUFFIX_BYTES], int.from_bytes(key[-GROUP_SUFFIX_BYTES:], "big")


def block_relpath(key: bytes) -> str:
    """`<h[0:3]>/<h[3:5]>_g<group>/<h>.bin`, h the lowercase hex of the block hash (group not in h)."""
    block_hash, group_idx = split_offload_key(key)
    h = block_hash.hex()
    return f"{h[0:3]}/{h[3:5]}_g{group_idx}/{h}.bin"


def block_path(blocks_dir: str | os.PathLike[str], key: bytes) -> str:
    """The absolute block file path of `key` under a namespace's blocks directory, as a str."""
    return f"{os.fspath(blocks_dir)}/{block_relpath(key)}"


def chunk_offload_keys(block_hashes: Sequence[bytes], hashes_per_chunk: int, group_idx: int) -> list[bytes]:
    """The offload keys of a request's full chunks: each keyed by the last block hash in the chunk.

    `hashes_per_chunk` = tokens_per_block(group) x blocks_per_chunk / tokens_per_hash. A trailing
    partial chunk has no key (vLLM stores only full chunks).
    """
    if hashes_per_chunk < 1:
        raise ValueError("hashes_per_chunk must be at least 1")
    last_of_each_chunk = block_hashes[hashes_per_chunk - 1 :: hashes_per_chunk]
    return [make_offload_key(block_hash, group_idx) for block_hash in last_of_each_chunk]
