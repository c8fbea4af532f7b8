"""The shared-volume block store, byte-compatible with vLLM's `fs` offload tier. Never imports torch.

* `naming`: namespace directories, offload keys and block paths (pure).
* `hashing`: block hashes and NONE_HASH per algorithm and vLLM release line (pure).
* `blockio`: publishing and loading block files (called from the agent's I/O worker threads).
"""

from tieredkv_agent.store.blockio import (
    BlockFiles,
    Durability,
    FileOps,
    LoadResult,
    LoadStatus,
    StoreResult,
    StoreStatus,
    probe_o_direct,
)
from tieredkv_agent.store.hashing import (
    HashAlgo,
    SeedRule,
    UnshareableNoneHashError,
    block_hashes,
    hash_block_tokens,
    none_hash,
    none_hash_for_env,
    none_hash_seed,
)
from tieredkv_agent.store.naming import (
    FieldSchema,
    KvCacheGroup,
    Namespace,
    RunConfig,
    block_path,
    block_relpath,
    chunk_offload_keys,
    ensure_namespace,
    make_offload_key,
    namespace_for,
    split_offload_key,
)

__all__ = [
    "BlockFiles",
    "Durability",
    "FieldSchema",
    "FileOps",
    "HashAlgo",
    "KvCacheGroup",
    "LoadResult",
    "LoadStatus",
    "Namespace",
    "RunConfig",
    "SeedRule",
    "StoreResult",
    "StoreStatus",
    "UnshareableNoneHashError",
    "block_hashes",
    "block_path",
    "block_relpath",
    "chunk_offload_keys",
    "ensure_namespace",
    "hash_block_tokens",
    "make_offload_key",
    "namespace_for",
    "none_hash",
    "none_hash_for_env",
    "none_hash_seed",
    "probe_o_direct",
    "split_offload_key",
]
