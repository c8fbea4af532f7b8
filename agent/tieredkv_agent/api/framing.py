"""Frames of the node socket API: a 4-byte big-endian body length, then the msgpack body.

`FrameEncoder` turns a message into one frame (the sending thread: the plugin's caller thread, the
agent's connection writer). `FrameDecoder` turns a byte stream, fed in chunks of any size, into messages
and `ProtocolError`s (one reader thread per connection, agent or plugin side). Neither touches a socket.

What the decoder does with bad input (see `tieredkv_agent.api.protocol` for the error codes):

* a body that is not msgpack, not a map, names an unknown type, or has a missing, ill-typed or
  out-of-bounds field: one MALFORMED or UNKNOWN_TYPE error in place of the message; the length prefix
  delimits the frame, so the next frame decodes normally. The error names the frame's `request_id` or
  `job_id` when they can be read, so that the sender can fail that request or job;
* a length prefix over `max_frame_bytes`: one fatal FRAME_TOO_LARGE error, then the decoder is `broken`
  and ignores all further input (the stream cannot be resynchronised; the agent closes the connection);
* a Hello that does not decode but offers a version this side does not speak: UNSUPPORTED_VERSION
  (a later version may change the Hello; the refusal must still name the versions spoken here);
* a frame cut off by the end of the stream: `end()` reports it.
"""

import struct
from typing import Any, Generic, TypeVar, get_args

import msgspec

from tieredkv_agent.api.protocol import (
    HEADER_BYTES,
    MAX_FRAME_BYTES,
    SUPPORTED_VERSIONS,
    ClientMessage,
    ErrorCode,
    Message,
    ProtocolError,
    ServerMessage,
    clip,
    tag_of,
    unsupported_version,
)

M = TypeVar("M")

_HEADER = struct.Struct(">I")
_DECODE_ERRORS = (msgspec.MsgspecError, RecursionError, UnicodeDecodeError)
"""What msgspec raises for bad input: its own errors, RecursionError (deep nesting) and
UnicodeDecodeError (a string that is not UTF-8, found by the fuzz tests). All mean a malformed body."""


class FrameEncoder:
    """Encodes messages into frames; one per sending thread (it reuses a buffer)."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._max = max_frame_bytes

    def encode(self, message: Message) -> bytes:
        """The frame of `message`; ValueError if its body would exceed `max_frame_bytes`."""
        frame = bytearray(HEADER_BYTES)
        self._encoder.encode_into(message, frame, HEADER_BYTES)
        size = len(frame) - HEADER_BYTES
        if size > self._max:
            raise ValueError(
                f"a {type(message).__name__} of {size} bytes exceeds the {self._max}-byte frame limit"
            )
        _HEADER.pack_into(frame, 0, size)
        return bytes(frame)


class _Envelope(msgspec.Struct):
    """What can be salvaged from a body that did not decode: its tag and ids, if well-formed."""

    type: Any = None
    version: Any = None
    request_id: Any = None
    job_id: Any = None


_ENVELOPE = msgspec.msgpack.Decoder(_Envelope)


class FrameDecoder(Generic[M]):
    """Splits a byte stream into frames and decodes each into one of a union of message types."""

    def __init__(
        self,
        decoder: "msgspec.msgpack.Decoder[M]",
        tags: frozenset[str],
        max_frame_bytes: int,
        versions: tuple[int, ...] = SUPPORTED_VERSIONS,
    ) -> None:
        """Use `client_decoder` or `server_decoder` rather than this."""
        self._decoder = decoder
        self._tags = tags
        self._versions = versions
        self._max = max_frame_bytes
        self._buffer = bytearray()
        self.broken = False
        """True after an oversized length prefix: nothing more can be decoded from this stream."""

    @property
    def buffered(self) -> int:
        """Bytes received and not yet decoded (a partial frame)."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[M | ProtocolError]:
        """The messages and errors completed by `data`, in stream order (the reader thread)."""
        if self.broken:
            return []
        self._buffer += data
        results: list[M | ProtocolError] = []
        consumed = 0
        with memoryview(self._buffer) as view:
            while len(view) - consumed >= HEADER_BYTES:
                (size,) = _HEADER.unpack_from(view, consumed)
                if size > self._max:
                    results.append(self._too_large(size))
                    consumed = len(view)  # nothing after an untrustworthy length can be framed
                    break
                end = consumed + HEADER_BYTES + size
                if end > len(view):
                    break
                with view[consumed + HEADER_BYTES : end] as body:
                    results.append(self._decode(body))
                consumed = end
        del self._buffer[:consumed]
        return results

    def end(self) -> ProtocolError | None:
        """At the end of the stream: an error if a frame was cut off, else None."""
        if self.broken or not self._buffer:
            return None
        pending = len(self._buffer)
        self._buffer.clear()
        return ProtocolError(
            ErrorCode.MALFORMED, f"stream ended inside a frame ({pending} bytes)", fatal=True
        )

    def _too_large(self, size: int) -> ProtocolError:
        self.broken = True
        message = f"frame length {size} exceeds the {self._max}-byte limit; closing the connection"
        return ProtocolError(ErrorCode.FRAME_TOO_LARGE, message, fatal=True)

    def _decode(self, body: memoryview) -> M | ProtocolError:
        try:
            return self._decoder.decode(body)
        except _DECODE_ERRORS as exc:
            return self._diagnose(body, exc)

    def _diagnose(self, body: memoryview, exc: BaseException) -> ProtocolError:
        """The error for a body that did not decode, with the ids and tag it carried, when readable."""
        try:
            envelope = _ENVELOPE.decode(body)
        except _DECODE_ERRORS:
            envelope = _Envelope()
        request_id, job_id = _id_or_none(envelope.request_id), _id_or_none(envelope.job_id)
        tag, version = envelope.type, _id_or_none(envelope.version)
        if tag == "hello" and version is not None and version not in self._versions:
            return unsupported_version(version, self._versions)  # a newer Hello may not fit our schema
        if isinstance(tag, str) and tag not in self._tags:
            accepted = ", ".join(sorted(self._tags))
            text = f"unknown message type {clip(repr(tag), 80)} (this side accepts: {accepted})"
            return ProtocolError(ErrorCode.UNKNOWN_TYPE, text, request_id=request_id, job_id=job_id)
        what = f"{tag} message" if isinstance(tag, str) else "frame"
        text = f"malformed {what}: {exc}"
        return ProtocolError(ErrorCode.MALFORMED, text, request_id=request_id, job_id=job_id)


def _id_or_none(value: object) -> int | None:
    return value if type(value) is int and 0 <= value < 2**63 else None


def _tags(union: object) -> frozenset[str]:
    return frozenset(tag_of(member) for member in get_args(union))


def client_decoder(max_frame_bytes: int = MAX_FRAME_BYTES) -> FrameDecoder[ClientMessage]:
    """A decoder for what the plugin sends (the agent's connection reader thread)."""
    decoder: msgspec.msgpack.Decoder[ClientMessage] = msgspec.msgpack.Decoder(ClientMessage)
    return FrameDecoder(decoder, _tags(ClientMessage), max_frame_bytes)


def server_decoder(max_frame_bytes: int = MAX_FRAME_BYTES) -> FrameDecoder[ServerMessage]:
    """A decoder for what the agent sends (the plugin's reader thread)."""
    decoder: msgspec.msgpack.Decoder[ServerMessage] = msgspec.msgpack.Decoder(ServerMessage)
    return FrameDecoder(decoder, _tags(ServerMessage), max_frame_bytes)
