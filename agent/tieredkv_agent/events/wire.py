"""vLLM's KV-events wire format, written from its published shape (`vllm.distributed.kv_events`).

One ZMQ message is three frames: the topic (UTF-8), the sequence number (8 bytes, big-endian, counting
from 0 per publisher) and the payload, a msgpack-encoded event batch:

    batch  = [ts, events, data_parallel_rank]  an array (vLLM's EventBatch is `array_like`); the rank
                                               is 0, as vLLM's publisher fills it for a single rank
    event  = {"type": "BlockStored" | "BlockRemoved" | "AllBlocksCleared", <fields>}   a map, tagged

The fields and their order of meaning are those of vLLM 0.32-0.34 (one set: 0.33 only added an optional
`lookahead_token_ids`, which a decoder of any line defaults). Fields at their default value are left
out, as vLLM's `omit_defaults` encoder does; the fields vLLM declares without a default are always
written, so every line's decoder accepts every event. A block file names only its hash and KV-cache
group, so a BlockStored from the shared tier is what vLLM's own `fs` tier publishes for a block it has
no request for: `token_ids` empty, `block_size` 0, `parent_block_hash` None.

The replay socket answers a request `[identity, b"", start_seq (8 bytes, big-endian)]` with every kept
message of sequence >= start_seq as `[identity, b"", topic, seq, payload]`, then the end marker
`[identity, b"", b"", END_SEQ, b""]`.

Everything here is pure and thread-safe (an encoder is used by one thread at a time).
"""

from __future__ import annotations

import msgspec

MEDIUM_STORAGE = "STORAGE"
"""vLLM's medium for file- and object-storage tiers (`MEDIUM_STORAGE`; its `fs` tier publishes this)."""
END_SEQ = (-1).to_bytes(8, "big", signed=True)
"""The sequence frame that ends a replay."""


class _Event(msgspec.Struct, tag=True, omit_defaults=True, gc=False):
    """Base of the event structs: encoded as a map whose "type" key is the class name."""


class BlockStored(_Event):
    """Blocks now held by the tier (vLLM's `BlockStored`; the required fields carry no default)."""

    block_hashes: list[bytes | int]
    parent_block_hash: bytes | int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    group_idx: int | None = None
    ownership: str | None = None


class BlockRemoved(_Event):
    """Blocks the tier no longer holds (vLLM's `BlockRemoved`)."""

    block_hashes: list[bytes | int]
    medium: str | None
    group_idx: int | None = None
    ownership: str | None = None


class AllBlocksCleared(_Event):
    """Everything this publisher announced before is gone (vLLM's `AllBlocksCleared`)."""


Event = BlockStored | BlockRemoved | AllBlocksCleared


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """One message's payload: a timestamp (Unix seconds) and the events, in order."""

    ts: float
    events: list[Event]
    data_parallel_rank: int | None = None


def encode_batch(encoder: msgspec.msgpack.Encoder, ts: float, events: list[Event]) -> bytes:
    """The msgpack payload of one batch (with the caller's encoder: one per thread)."""
    return encoder.encode(EventBatch(ts, events, 0))


def decode_batch(payload: bytes) -> EventBatch:
    """A payload back into structs (tests, the subscriber example); msgspec.DecodeError if malformed."""
    return msgspec.msgpack.decode(payload, type=EventBatch)


def seq_bytes(seq: int) -> bytes:
    """The sequence frame of message `seq`."""
    return seq.to_bytes(8, "big")


def pool_identity(namespace: str, cache: str) -> str:
    """The stable name of a shared cache in events: `pool:<namespace>/<cache>` (see docs/events.md)."""
    return f"pool:{namespace or 'default'}/{cache}"


def topic_for(identity: str, model_name: str) -> str:
    """`kv@<identity>@<model>`: the topic shape llm-d's indexer parses (publisher, then model)."""
    return f"kv@{identity}@{model_name}"
