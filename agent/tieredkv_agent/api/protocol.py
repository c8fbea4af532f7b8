"""The node socket API, protocol version 1: what a vLLM tier plugin and its node agent say to each other.

docs/protocol.md is the long form of this docstring (with a sequence diagram and the rationale).

Transport. A Unix stream socket, `<socketDir>/<namespace>.<cache>/agent.sock`, one connection per vLLM
engine (scheduler process). Byte stream of frames, each a 4-byte big-endian unsigned length N followed
by an N-byte msgpack map with a `"type"` key (the message tag) and the message's fields by name. N counts
the body only. The framing, `Hello`, `HelloOk` and `Error` stay readable by every version (fields are only
ever added to them, with defaults), so a peer of any version can understand a refusal.

Encoding: msgspec msgpack. vLLM already depends on msgspec, so the plugin adds nothing to the vLLM image;
msgpack carries the binary keys as they are (JSON would need base64: +33 % and a copy); decoding into
typed Structs checks every field in C and names the first bad one (`Expected int >= 0 - at $.job_id`);
and it is the fastest msgpack codec for Python. Unknown fields are ignored, so a field added with a
default stays compatible; anything else (new message, new error code, changed meaning) is a new version.

Lifecycle (P = plugin, A = agent)::

    P: Hello + region fd (SCM_RIGHTS, same sendmsg)  ->  A: HelloOk | Error (connection stays open)
    P: Lookup   -> A: LookupReply (in order: lookups are answered on the reader thread)
    P: Store / Load -> (nothing now) ... A: JobDone, exactly once per accepted job, in completion order
                    -> or A: Error naming the job_id: the job was not accepted and gets no JobDone
    P: Drain    -> A: Drained after the JobDone of every job accepted before it; until then only Lookups
    P or A: Goodbye -> the sender closes; the agent cancels queued blocks, waits for running I/O, closes

The plugin sends the whole Hello frame in one `sendmsg` carrying exactly one descriptor: the instance's
shared-memory CPU region (`/dev/shm/vllm_offload_<engine>.mmap`). Block slot s of that region starts at
byte `s * profile.block_bytes`; the region must be a whole number of blocks.

Messages (plugin -> agent): `Hello`, `Lookup`, `Store`, `Load`, `Drain`, `Goodbye`.
Messages (agent -> plugin): `HelloOk`, `LookupReply`, `JobDone`, `Drained`, `Goodbye`, `Error`.
Each Struct below documents its fields.

Limits per connection (defaults; `HelloOk` reports the agent's): a frame body of at most 4 MiB
(`max_frame_bytes`), at most 16384 keys per Lookup/Store/Load (`max_keys`), at most 1024 Store+Load jobs
accepted and not yet reported (`max_inflight_jobs`) holding at most `max_inflight_keys` keys, strings and
keys bounded as their types say. Agent-wide limits (connections, partial frames) answer OVERLOADED; the
bytes a job stages in the agent only make it wait. `tieredkv_common.agent_limits` holds every default.

Errors. A frame whose body is malformed (not msgpack, not a map, a missing or ill-typed field, an unknown
type), a message the connection's state does not allow (anything before the Hello, a second Hello, a job
during a drain, anything after Goodbye) or one over a limit gets an `Error` reply and is otherwise
ignored: the connection survives, because the length prefix still delimits the next frame. A length
prefix over `max_frame_bytes` cannot be trusted to delimit anything, so it is the one fatal error: the
agent sends `Error(FRAME_TOO_LARGE, fatal=True)` and closes. `ErrorCode` lists every code.

Security stance: the socket is reachable only by pods that mount the cache's socket directory; the agent
still treats every byte as hostile (bounded frames, typed decoding, slot range checks) and never learns
the hash seed: the Hello carries only a fingerprint of NONE_HASH (`none_hash_fingerprint`).

Threads: the agent's per-connection reader thread decodes frames (`framing.FrameDecoder`) and runs the
`session.Session`; the plugin encodes on whichever thread vLLM calls it from and decodes on its reader.
Messages are frozen Structs and may be handed between threads (do not mutate their lists).
"""

import enum
import hashlib
from collections.abc import Sequence
from typing import Annotated, Literal, Self, TypeAlias

import msgspec

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
"""The versions this code speaks; an agent refuses a Hello offering any other."""

HEADER_BYTES = 4
MAX_FRAME_BYTES = 4 * 1024 * 1024
MAX_KEYS = 16_384
MAX_INFLIGHT_JOBS = 1024
MAX_ERROR_MESSAGE = 1024
MAX_RUN_CONFIG_BYTES = 64 * 1024
FINGERPRINT_HEX_DIGITS = 16

HashAlgoName: TypeAlias = Literal["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"]
KEY_BYTES: dict[str, int] = {"sha256": 36, "sha256_cbor": 36, "xxhash": 20, "xxhash_cbor": 20}
"""Offload key length per hash algorithm: the block hash (32 or 16 bytes) + the 4-byte group index."""

U63 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Positive = Annotated[int, msgspec.Meta(gt=0, le=2**63 - 1)]
Key = Annotated[bytes, msgspec.Meta(min_length=5, max_length=68)]
"""vLLM's OffloadKey: block hash + 4-byte big-endian group index (the session checks the exact length)."""
Slot = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Name = Annotated[str, msgspec.Meta(max_length=255)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_ERROR_MESSAGE)]


class ErrorCode(enum.IntEnum):
    """Why the agent refused a frame or message. Values are stable; a new code is a new version."""

    MALFORMED = 1
    """The body is not a msgpack map with a `type`, or a field is missing, ill-typed or out of bounds."""
    UNKNOWN_TYPE = 2
    """The `type` names no message the receiver accepts."""
    FRAME_TOO_LARGE = 3
    """The length prefix exceeds `max_frame_bytes`; fatal: the agent closes the connection."""
    OUT_OF_ORDER = 4
    """The message is not allowed in the connection's state (before Hello, during a drain, after Goodbye)."""
    UNSUPPORTED_VERSION = 5
    """The Hello offered a version the agent does not speak; `supported_versions` lists those it does."""
    INCOMPATIBLE = 6
    """The Hello's compat profile is not one this agent serves (namespace, hash, NONE_HASH, vLLM)."""
    BAD_REGION = 7
    """No (or more than one) descriptor came with the Hello, or its size is not `region_bytes`, or not
    a whole number of blocks."""
    LIMIT_EXCEEDED = 8
    """Too many keys in one message, or too many jobs in flight."""
    BAD_REQUEST = 9
    """Well-typed but invalid: another namespace, a wrong key length, a slot outside the region,
    keys and slots of different lengths, a load with two keys for one slot, a job id already in flight."""
    INTERNAL = 10
    """The agent failed while handling the message; the request or job named is not served."""
    OVERLOADED = 11
    """An agent-wide limit (connections, partial-frame bytes of all connections) refused the connection;
    fatal. Older plugins read it as a malformed Error; the connection closes either way."""


class LookupCode(enum.IntEnum):
    """One byte per key in `LookupReply.results` (the tier contract's LookupResult)."""

    MISS = 0
    HIT = 1
    RETRY = 2


class ProtocolError(Exception):
    """A refusal: raised by helpers, returned (never raised) by the frame decoder, sent as an `Error`."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        request_id: int | None = None,
        job_id: int | None = None,
        fatal: bool = False,
        supported_versions: tuple[int, ...] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = clip(message)
        self.request_id = request_id
        self.job_id = job_id
        self.fatal = fatal
        self.supported_versions = supported_versions

    def to_message(self) -> "Error":
        """The Error frame that reports this refusal."""
        return Error(
            code=self.code,
            message=self.message,
            request_id=self.request_id,
            job_id=self.job_id,
            fatal=self.fatal,
            supported_versions=self.supported_versions,
        )

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.name}, {self.message!r})"


def clip(text: str, limit: int = MAX_ERROR_MESSAGE) -> str:
    """`text` cut to `limit` characters (error messages echo peer input, which must not grow them)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Message(msgspec.Struct, tag_field="type", frozen=True, kw_only=True):
    """Base of every message: a msgpack map whose `type` key is the class's tag."""


class CompatProfile(msgspec.Struct, frozen=True, kw_only=True):
    """What must match for the instance's blocks to be usable by everyone sharing the cache."""

    namespace: Name
    """The namespace directory name, `<safe_model>_<digest12>` (blocks live in its `_r0` sibling)."""
    block_bytes: Positive
    """Bytes per block slot of the region (vLLM's `primary_kv_view.strides[0]`) and per block file."""
    hash_algo: HashAlgoName
    """`--prefix-caching-hash-algo`; fixes the key length (`KEY_BYTES`)."""
    none_hash_fingerprint: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{16}$")]
    """`none_hash_fingerprint(NONE_HASH)`: proves the seed matches without revealing it."""


class Hello(_Message, tag="hello", frozen=True):
    """First frame of every connection (plugin); the region descriptor rides on the same sendmsg."""

    version: U63
    """The protocol version the plugin speaks."""
    instance_id: Name
    """Who is speaking, for logs and metrics: `<pod>/<engine id>`."""
    vllm_version: Annotated[str, msgspec.Meta(max_length=64)]
    """vLLM's version string, e.g. `0.33.0`."""
    profile: CompatProfile
    region_bytes: Positive
    """The size of the region the descriptor maps; must equal its size and be a multiple of block_bytes."""
    run_config: Annotated[str, msgspec.Meta(max_length=MAX_RUN_CONFIG_BYTES)] | None = None
    """vLLM's run-config fields as JSON (`FileMapper.get_run_config()`), so the agent can write the
    namespace's `config.json` as vLLM's fs tier would; they must digest to `profile.namespace`."""


class HelloOk(_Message, tag="hello_ok", frozen=True):
    """The agent accepted the Hello and kept the region's descriptor (agent)."""

    version: U63
    """The version both sides now speak."""
    agent_version: Annotated[str, msgspec.Meta(max_length=64)]
    region_slots: U63
    """`region_bytes // block_bytes`: valid slots are 0 .. region_slots - 1."""
    max_frame_bytes: Positive
    """This connection's limits (see the module docstring); the plugin splits batches to fit them."""
    max_keys: Positive
    max_inflight_jobs: Positive
    max_inflight_keys: U63 = 0
    """Keys of Store and Load jobs accepted and not yet reported; 0 from an agent that does not say."""


class Lookup(_Message, tag="lookup", frozen=True):
    """Which of these keys can be loaded (plugin); answered by one `LookupReply`."""

    request_id: U63
    """Chosen by the plugin, echoed in the reply."""
    namespace: Name
    """Must be the Hello's namespace (as in Store and Load)."""
    keys: list[Key]
    """At most `max_keys`, each exactly `KEY_BYTES[hash_algo]` long (as in Store and Load)."""
    vllm_request_id: Text | None = None
    """The vLLM request asking, so that store admission counts a key once per request."""


class LookupReply(_Message, tag="lookup_reply", frozen=True):
    """One `LookupCode` byte per key of the Lookup, in order (agent)."""

    request_id: U63
    results: bytes
    """`LookupCode` values: 0 MISS, 1 HIT, 2 RETRY (unknown yet: ask again later)."""

    @classmethod
    def of(cls, request_id: int, codes: Sequence[LookupCode]) -> Self:
        return cls(request_id=request_id, results=bytes(codes))

    def codes(self) -> list[LookupCode]:
        """The answers; ValueError on a byte that is no LookupCode (plugin's reader thread)."""
        return [LookupCode(byte) for byte in self.results]


class Store(_Message, tag="store", frozen=True):
    """Copy region slot `slots[i]` into the block file of `keys[i]` (plugin); answered by `JobDone`.

    The slots must stay unchanged until the job's JobDone (vLLM pins them until the job is finished).
    """

    job_id: U63
    """vLLM's job id: unique among this connection's jobs in flight."""
    namespace: Name
    keys: list[Key]
    slots: list[Slot]
    """One per key, each below `region_slots`; byte offset `slot * block_bytes`."""


class Load(_Message, tag="load", frozen=True):
    """Copy the block file of `keys[i]` into region slot `slots[i]` (plugin); answered by `JobDone`.

    Fields as in Store; a Load may not name one slot twice.
    """

    job_id: U63
    namespace: Name
    keys: list[Key]
    slots: list[Slot]


class JobDone(_Message, tag="job_done", frozen=True):
    """A Store or Load finished (agent); sent exactly once per accepted job."""

    job_id: U63
    success: bool
    """True iff every key succeeded (stored or already present; loaded)."""
    key_ok: bytes = b""
    """Empty when `success`; else bit i (LSB first within each byte) set iff key i succeeded."""
    transfer_bytes: U63 = 0
    """Bytes this job itself wrote or read."""
    elapsed_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """From acceptance to the last key settled."""
    reason: Annotated[str, msgspec.Meta(max_length=32)] = ""
    """Why keys failed, when one cause explains it: `no_space` (the volume is full: ENOSPC or EDQUOT),
    `region` (the region could not be read or written: the client shrank its file), `io_error`;
    empty on success or for misses and skips."""

    @classmethod
    def of(
        cls, job_id: int, flags: Sequence[bool], transfer_bytes: int, elapsed_s: float, reason: str = ""
    ) -> Self:
        success = all(flags)
        key_ok = b"" if success else pack_bits(flags)
        return cls(
            job_id=job_id,
            success=success,
            key_ok=key_ok,
            transfer_bytes=transfer_bytes,
            elapsed_s=elapsed_s,
            reason=reason,
        )

    def flags(self, count: int) -> list[bool]:
        """Per-key success for a job of `count` keys (plugin's reader thread)."""
        return [True] * count if self.success else unpack_bits(self.key_ok, count)


class Drain(_Message, tag="drain", frozen=True):
    """Tell me when every job accepted so far is reported (plugin); answered by `Drained`."""

    request_id: U63
    """Echoed in the Drained."""


class Drained(_Message, tag="drained", frozen=True):
    """Every job accepted before the Drain has had its JobDone (agent); jobs are accepted again."""

    request_id: U63


class Goodbye(_Message, tag="goodbye", frozen=True):
    """The sender is closing the connection (either side); nothing follows it."""

    reason: Text = ""


class Error(_Message, tag="error", frozen=True):
    """A refusal (agent). Names the request or job it concerns when the frame said which."""

    code: ErrorCode
    message: Text
    """For humans; peer input echoed in it is clipped."""
    request_id: U63 | None = None
    """The Lookup or Drain refused, when known."""
    job_id: U63 | None = None
    """Set when a Store or Load was refused: that job gets no JobDone; the plugin reports it failed."""
    fatal: bool = False
    """True when the agent closes the connection after this frame."""
    supported_versions: tuple[U63, ...] = ()
    """With UNSUPPORTED_VERSION: the versions the agent speaks."""


ClientMessage: TypeAlias = Hello | Lookup | Store | Load | Drain | Goodbye
"""What the plugin sends and the agent decodes."""
ServerMessage: TypeAlias = HelloOk | LookupReply | JobDone | Drained | Goodbye | Error
"""What the agent sends and the plugin decodes."""
Message: TypeAlias = ClientMessage | ServerMessage


def unsupported_version(offered: int, supported: tuple[int, ...]) -> ProtocolError:
    """The refusal of a Hello offering a version not in `supported`; names both."""
    speaks = ", ".join(map(str, supported))
    message = f"protocol version {offered} is not supported; this agent speaks {speaks}"
    return ProtocolError(ErrorCode.UNSUPPORTED_VERSION, message, supported_versions=supported)


def tag_of(message_type: type[_Message]) -> str:
    """The `type` value of a message class."""
    return str(message_type.__struct_config__.tag)


def none_hash_fingerprint(none_hash: bytes) -> str:
    """The first 16 hex digits of sha256(NONE_HASH): equal seeds give equal fingerprints.

    NONE_HASH is 16 or 32 bytes of hash output, so 64 bits of its sha256 reveal nothing usable about it
    (a guessable seed such as "0" is guessable anyway, from any block file name).
    """
    return hashlib.sha256(none_hash).hexdigest()[:FINGERPRINT_HEX_DIGITS]


def pack_bits(flags: Sequence[bool]) -> bytes:
    """Bit i of the result (byte i // 8, LSB first) is flags[i]."""
    packed = bytearray((len(flags) + 7) // 8)
    for index, flag in enumerate(flags):
        if flag:
            packed[index >> 3] |= 1 << (index & 7)
    return bytes(packed)


def unpack_bits(packed: bytes, count: int) -> list[bool]:
    """The first `count` flags of a `pack_bits` result; ValueError if it holds a different number."""
    if len(packed) != (count + 7) // 8:
        raise ValueError(f"a bitmap of {count} flags has {(count + 7) // 8} bytes, not {len(packed)}")
    return [bool(packed[index >> 3] & (1 << (index & 7))) for index in range(count)]
