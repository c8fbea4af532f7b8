"""The socket API's protocol: message round trips, framing, bad input, the session's rules and limits."""

import itertools
import re
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tieredkv_agent.api.framing import FrameEncoder, client_decoder, server_decoder
from tieredkv_agent.api.protocol import (
    ClientMessage,
    CompatProfile,
    Drain,
    Drained,
    Error,
    ErrorCode,
    Goodbye,
    Hello,
    HelloOk,
    JobDone,
    Load,
    Lookup,
    LookupCode,
    LookupReply,
    ProtocolError,
    ServerMessage,
    Store,
    none_hash_fingerprint,
    pack_bits,
    tag_of,
    unpack_bits,
)
from tieredkv_agent.api.session import (
    Limits,
    Session,
    State,
    Verdict,
    check_slots,
    job_done,
    lookup_reply,
    region_slots,
    slot_offset,
)
from tieredkv_agent.engine.index import LookupResult
from tieredkv_agent.engine.jobs import JobKind, JobResult, KeyStatus

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
NS = "meta-llama_Meta-Llama-3-8B-Instruct_0123456789ab"
BLOCK = 4096
SLOTS = 64
PROFILE = CompatProfile(
    namespace=NS,
    block_bytes=BLOCK,
    hash_algo="sha256",
    none_hash_fingerprint=none_hash_fingerprint(b"\1" * 32),
)
HELLO = Hello(
    version=1,
    instance_id="vllm-0/engine-0",
    vllm_version="0.33.0",
    profile=PROFILE,
    region_bytes=BLOCK * SLOTS,
)


def keys(count: int, start: int = 0) -> list[bytes]:
    return [i.to_bytes(32, "big") + (0).to_bytes(4, "big") for i in range(start, start + count)]


def store(job_id: int, count: int = 2, **changes: Any) -> Store:
    plain = Store(job_id=job_id, namespace=NS, keys=keys(count), slots=list(range(count)))
    return msgspec.structs.replace(plain, **changes)


def load(job_id: int, count: int = 2, **changes: Any) -> Load:
    plain = Load(job_id=job_id, namespace=NS, keys=keys(count), slots=list(range(count)))
    return msgspec.structs.replace(plain, **changes)


CLIENT_MESSAGES: list[ClientMessage] = [
    HELLO,
    Lookup(request_id=7, namespace=NS, keys=keys(3), vllm_request_id="cmpl-1"),
    Lookup(request_id=8, namespace=NS, keys=[]),
    store(9),
    load(10, 3),
    Drain(request_id=11),
    Goodbye(reason="shutting down"),
]
SERVER_MESSAGES: list[ServerMessage] = [
    HelloOk(
        version=1,
        agent_version="0.1.0",
        region_slots=SLOTS,
        max_frame_bytes=1 << 22,
        max_keys=16,
        max_inflight_jobs=4,
    ),
    LookupReply.of(7, [LookupCode.HIT, LookupCode.MISS, LookupCode.RETRY]),
    JobDone.of(9, [True, True], transfer_bytes=2 * BLOCK, elapsed_s=0.25),
    JobDone.of(10, [True, False, True], transfer_bytes=BLOCK, elapsed_s=0.5),
    Drained(request_id=11),
    Goodbye(),
    Error(
        code=ErrorCode.UNSUPPORTED_VERSION,
        message="no",
        request_id=3,
        job_id=4,
        fatal=True,
        supported_versions=(1,),
    ),
]


def frames(messages: Iterable[ClientMessage | ServerMessage]) -> bytes:
    encoder = FrameEncoder()
    return b"".join(encoder.encode(message) for message in messages)


def frame_of(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def ready_session(limits: Limits | None = None) -> Session:
    session = Session(agent_version="0.1.0", limits=limits)
    assert session.receive(HELLO, region_bytes=BLOCK * SLOTS).accepted
    return session


def refusal(verdict: Verdict) -> Error:
    assert not verdict.accepted
    assert isinstance(verdict.reply, Error)
    return verdict.reply


# -- messages and frames ------------------------------------------------------------------------------


@pytest.mark.parametrize("message", CLIENT_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_plugin_message_comes_out_of_the_agents_decoder_as_it_went_in(message: ClientMessage) -> None:
    assert client_decoder().feed(frames([message])) == [message]


@pytest.mark.parametrize("message", SERVER_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_agent_message_comes_out_of_the_plugins_decoder_as_it_went_in(message: ServerMessage) -> None:
    assert server_decoder().feed(frames([message])) == [message]


def test_a_frame_is_a_big_endian_body_length_then_a_msgpack_map_tagged_with_its_type() -> None:
    frame = frames([Drain(request_id=5)])
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert msgspec.msgpack.decode(frame[4:]) == {"type": "drain", "request_id": 5}


def test_a_stream_split_at_every_byte_boundary_decodes_identically() -> None:
    stream = frames(CLIENT_MESSAGES)
    for cut in range(len(stream) + 1):
        decoder = client_decoder()
        assert decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) == CLIENT_MESSAGES
        assert decoder.buffered == 0
    decoder = client_decoder()
    assert [
        message for i in range(len(stream)) for message in decoder.feed(stream[i : i + 1])
    ] == CLIENT_MESSAGES


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",
        msgspec.msgpack.encode([1, 2]),
        msgspec.msgpack.encode({"request_id": 3}),
        msgspec.msgpack.encode({"type": "drain", "request_id": "three"}),
        msgspec.msgpack.encode({"type": "drain", "request_id": -1}),
        msgspec.msgpack.encode({"type": "drain", "request_id": 1}) + b"\x00",
        b"\x91" * 100_000 + b"\x00",
    ],
    ids=["empty", "bad-opcode", "array", "no-type", "wrong-type", "negative", "trailing", "deep-nesting"],
)
def test_a_malformed_body_is_reported_and_the_next_frame_still_decodes(body: bytes) -> None:
    error, message = client_decoder().feed(frame_of(body) + frames([Drain(request_id=9)]))
    assert isinstance(error, ProtocolError)
    assert (error.code, error.fatal) == (ErrorCode.MALFORMED, False)
    assert message == Drain(request_id=9)


def test_a_malformed_job_names_its_job_id_so_that_the_plugin_can_fail_it() -> None:
    body = msgspec.msgpack.encode(
        {"type": "store", "job_id": 12, "namespace": NS, "keys": [b"x"], "slots": [0]}
    )
    [error] = client_decoder().feed(frame_of(body))
    assert isinstance(error, ProtocolError)
    assert (error.code, error.job_id) == (ErrorCode.MALFORMED, 12)
    assert "$.keys[0]" in error.message
    assert error.to_message().job_id == 12


def test_an_unknown_type_is_reported_with_the_types_this_side_accepts() -> None:
    body = msgspec.msgpack.encode({"type": "teleport", "request_id": 4})
    error, hello_ok = client_decoder().feed(frame_of(body) + frames(SERVER_MESSAGES[:1]))
    assert isinstance(error, ProtocolError) and isinstance(hello_ok, ProtocolError)
    assert (error.code, error.request_id) == (ErrorCode.UNKNOWN_TYPE, 4)
    assert "'teleport'" in error.message and "hello, load, lookup, store" in error.message
    assert hello_ok.code is ErrorCode.UNKNOWN_TYPE  # a message for the other direction


def test_an_echoed_unknown_type_cannot_make_the_error_message_grow() -> None:
    [error] = client_decoder().feed(frame_of(msgspec.msgpack.encode({"type": "x" * 100_000})))
    assert isinstance(error, ProtocolError)
    assert len(error.message) < 300
    assert len(FrameEncoder().encode(error.to_message())) < 400


def test_an_oversized_length_is_fatal_and_nothing_after_it_is_decoded() -> None:
    decoder = client_decoder(max_frame_bytes=1024)
    good = frames([Drain(request_id=1)])
    results = decoder.feed(good + (1025).to_bytes(4, "big") + good)
    assert results[0] == Drain(request_id=1)
    error = results[1]
    assert isinstance(error, ProtocolError) and len(results) == 2
    assert (error.code, error.fatal, error.to_message().fatal) == (ErrorCode.FRAME_TOO_LARGE, True, True)
    assert decoder.broken and decoder.buffered == 0
    assert decoder.feed(good) == [] and decoder.end() is None


def test_a_frame_of_exactly_the_size_limit_is_accepted() -> None:
    frame = frames([Drain(request_id=1)])
    assert client_decoder(max_frame_bytes=len(frame) - 4).feed(frame) == [Drain(request_id=1)]
    [error] = client_decoder(max_frame_bytes=len(frame) - 5).feed(frame)
    assert isinstance(error, ProtocolError) and error.code is ErrorCode.FRAME_TOO_LARGE


def test_a_stream_that_ends_inside_a_frame_is_reported_at_its_end() -> None:
    decoder = client_decoder()
    assert decoder.feed(frames([Drain(request_id=1)])[:-1]) == []
    error = decoder.end()
    assert error is not None and error.code is ErrorCode.MALFORMED and decoder.end() is None


def test_the_encoder_refuses_a_message_larger_than_a_frame() -> None:
    with pytest.raises(ValueError, match="exceeds the 64-byte frame limit"):
        FrameEncoder(max_frame_bytes=64).encode(store(1, 8))


def test_the_default_limits_fit_a_full_batch_of_keys_into_one_frame() -> None:
    limits = Limits()
    frame = frames([store(1, limits.max_keys, slots=[2**31] * limits.max_keys)])
    assert len(frame) - 4 < limits.max_frame_bytes // 4


# -- the session ---------------------------------------------------------------------------------------


def test_a_store_before_the_hello_is_refused_but_the_session_continues() -> None:
    session = Session(agent_version="0.1.0")
    error = refusal(session.receive(store(1)))
    assert (error.code, error.job_id, error.fatal) == (ErrorCode.OUT_OF_ORDER, 1, False)
    assert "Hello" in error.message
    ok = session.receive(HELLO, region_bytes=BLOCK * SLOTS)
    assert ok.accepted and isinstance(ok.reply, HelloOk) and ok.reply.region_slots == SLOTS
    assert session.receive(store(1)) == Verdict(True) and session.in_flight == 1


def test_a_version_mismatch_names_the_offered_and_the_supported_versions() -> None:
    session = Session(agent_version="0.1.0", versions=(1, 2))
    error = refusal(session.receive(msgspec.structs.replace(HELLO, version=7), region_bytes=BLOCK * SLOTS))
    assert error.code is ErrorCode.UNSUPPORTED_VERSION and error.supported_versions == (1, 2)
    assert re.search(r"\b7\b.*\b1, 2\b", error.message)
    assert session.state is State.AWAIT_HELLO
    assert session.receive(HELLO, region_bytes=BLOCK * SLOTS).accepted


def test_a_newer_hello_that_does_not_fit_this_schema_is_still_refused_by_version() -> None:
    body = msgspec.msgpack.encode({"type": "hello", "version": 9, "profile": "a newer shape"})
    [error] = client_decoder().feed(frame_of(body))
    assert isinstance(error, ProtocolError) and error.code is ErrorCode.UNSUPPORTED_VERSION
    assert error.to_message().supported_versions == (1,) and "9" in error.message


@pytest.mark.parametrize(
    ("region_bytes", "declared"),
    [(None, BLOCK * SLOTS), (BLOCK * SLOTS + 1, BLOCK * SLOTS), (BLOCK * 3 + 1, BLOCK * 3 + 1)],
    ids=["no-descriptor", "size-differs", "partial-block"],
)
def test_a_hello_without_a_usable_region_is_refused(region_bytes: int | None, declared: int) -> None:
    session = Session(agent_version="0.1.0")
    hello = msgspec.structs.replace(HELLO, region_bytes=declared)
    assert refusal(session.receive(hello, region_bytes=region_bytes)).code is ErrorCode.BAD_REGION
    assert session.state is State.AWAIT_HELLO


def test_a_profile_the_agent_does_not_serve_is_refused_with_its_reason() -> None:
    session = Session(agent_version="0.1.0", check_hello=lambda hello: f"seed differs ({hello.instance_id})")
    error = refusal(session.receive(HELLO, region_bytes=BLOCK * SLOTS))
    assert error.code is ErrorCode.INCOMPATIBLE and "seed differs (vllm-0/engine-0)" in error.message


def test_too_many_keys_or_jobs_exceed_the_limits_and_finishing_a_job_frees_its_place() -> None:
    session = ready_session(limits=Limits(max_keys=4, max_inflight_jobs=2))
    lookup = Lookup(request_id=3, namespace=NS, keys=keys(5))
    assert refusal(session.receive(lookup)).code is ErrorCode.LIMIT_EXCEEDED
    assert refusal(session.receive(store(1, 5))).job_id == 1
    assert session.receive(store(1, 4)).accepted and session.receive(load(2, 4)).accepted
    error = refusal(session.receive(store(3)))
    assert (error.code, error.job_id) == (ErrorCode.LIMIT_EXCEEDED, 3)
    assert session.finish(1) is None and session.receive(store(3)).accepted


@pytest.mark.parametrize(
    "message",
    [
        Lookup(request_id=1, namespace="another_0123456789ab", keys=keys(1)),
        Lookup(request_id=1, namespace=NS, keys=[b"k" * 20]),
        store(1, namespace="another_0123456789ab"),
        store(1, keys=[*keys(1), b"k" * 20]),
        store(1, slots=[0, SLOTS]),
        store(1, slots=[0]),
        load(1, slots=[5, 5]),
    ],
    ids=[
        "lookup-namespace",
        "lookup-key-length",
        "namespace",
        "key-length",
        "slot-range",
        "slot-count",
        "load-slot-twice",
    ],
)
def test_a_well_typed_but_invalid_request_is_a_bad_request(message: ClientMessage) -> None:
    session = ready_session()
    error = refusal(session.receive(message))
    assert error.code is ErrorCode.BAD_REQUEST
    assert (error.request_id, error.job_id) in {(1, None), (None, 1)}
    assert session.in_flight == 0 and session.state is State.READY


def test_a_job_id_already_in_flight_is_refused() -> None:
    session = ready_session()
    assert session.receive(store(1)).accepted
    assert refusal(session.receive(load(1))).code is ErrorCode.BAD_REQUEST
    assert session.in_flight == 1


def test_a_drain_waits_for_the_jobs_in_flight_and_refuses_new_jobs_meanwhile() -> None:
    session = ready_session()
    assert session.receive(Drain(request_id=5)) == Verdict(True, Drained(request_id=5))
    assert session.receive(store(1)).accepted and session.receive(load(2)).accepted
    assert session.receive(Drain(request_id=6)) == Verdict(True)
    assert (session.state, session.in_flight) == (State.DRAINING, 2)
    assert refusal(session.receive(store(3))).code is ErrorCode.OUT_OF_ORDER
    assert refusal(session.receive(Drain(request_id=7))).request_id == 7
    assert session.receive(Lookup(request_id=8, namespace=NS, keys=keys(2))).accepted
    assert session.finish(2) is None
    assert session.finish(1) == Drained(request_id=6)
    assert session.state is State.READY and session.receive(store(3)).accepted


def test_after_goodbye_nothing_is_accepted_but_jobs_still_finish() -> None:
    session = ready_session()
    assert session.receive(store(1)).accepted and session.receive(Goodbye()).accepted
    for message in (HELLO, store(2), Drain(request_id=1), Goodbye()):
        assert refusal(session.receive(message, region_bytes=BLOCK * SLOTS)).code is ErrorCode.OUT_OF_ORDER
    assert session.finish(1) is None and session.state is State.CLOSED


def test_a_second_hello_is_out_of_order_and_finishing_an_unknown_job_is_a_bug() -> None:
    session = ready_session()
    assert refusal(session.receive(HELLO, region_bytes=BLOCK * SLOTS)).code is ErrorCode.OUT_OF_ORDER
    with pytest.raises(ValueError, match="not in flight"):
        session.finish(99)


# -- helpers ---------------------------------------------------------------------------------------------


def test_region_slots_and_offsets_accept_only_whole_blocks_inside_the_region() -> None:
    assert region_slots(BLOCK * 3, BLOCK) == 3 and slot_offset(2, BLOCK) == 2 * BLOCK
    for size in (0, BLOCK - 1, BLOCK * 3 + 7):
        with pytest.raises(ProtocolError) as refused:
            region_slots(size, BLOCK)
        assert refused.value.code is ErrorCode.BAD_REGION
    check_slots([0, 2], 3)
    with pytest.raises(ProtocolError, match="slot 3 is outside"):
        check_slots([0, 3], 3)


def test_the_none_hash_fingerprint_is_16_hex_digits_and_tells_seeds_apart() -> None:
    sha256_seed_0 = bytes.fromhex("1973e23848344dc43a988a9b478663803cfffe1243480253f9a3cf004b14aa7c")
    fingerprint = none_hash_fingerprint(sha256_seed_0)
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint) and fingerprint not in sha256_seed_0.hex()
    assert fingerprint == none_hash_fingerprint(bytes(sha256_seed_0))
    assert fingerprint != none_hash_fingerprint(
        bytes.fromhex("066b1e8987e027138e98701c46128929378935f9b6cd1549105ae6b4f0d71198")
    )


@given(st.lists(st.booleans(), max_size=80))
def test_a_bitmap_gives_back_its_flags(flags: list[bool]) -> None:
    assert unpack_bits(pack_bits(flags), len(flags)) == flags
    done = JobDone.of(1, flags, 0, 0.0)
    assert done.flags(len(flags)) == flags and done.success == all(flags)
    assert done.key_ok == (b"" if all(flags) else pack_bits(flags))


def test_engine_results_become_replies() -> None:
    reply = lookup_reply(4, [LookupResult.HIT, LookupResult.RETRY, LookupResult.MISS])
    assert reply.results == b"\x01\x02\x00"
    assert reply.codes() == [LookupCode.HIT, LookupCode.RETRY, LookupCode.MISS]
    statuses = (KeyStatus.DONE, KeyStatus.MISSING, KeyStatus.PRESENT)
    result = JobResult(3, JobKind.LOAD, tuple(keys(3)), statuses, BLOCK, 0.5)
    assert job_done(result) == JobDone(
        job_id=3, success=False, key_ok=b"\x05", transfer_bytes=BLOCK, elapsed_s=0.5
    )


def test_docs_name_every_message_field_and_error_code() -> None:
    text = DOC.read_text()
    for message_type in {type(m) for m in CLIENT_MESSAGES + SERVER_MESSAGES}:
        assert f"**`{tag_of(message_type)}`**, `{message_type.__name__}`" in text
        for field in message_type.__struct_fields__:
            assert f"| `{field}`" in text or f"`{field}` (" in text, (message_type.__name__, field)
    for field in CompatProfile.__struct_fields__:
        assert f"| `{field}` |" in text, field
    for code in ErrorCode:
        assert f"| {code.value} | `{code.name}` |" in text


# -- fuzzing -----------------------------------------------------------------------------------------------


def decode_all(data: bytes, cuts: list[int], max_frame_bytes: int = 4096) -> list[object]:
    """Feed `data` in pieces cut at `cuts`; every result must be a message or a ProtocolError."""
    decoder = client_decoder(max_frame_bytes=max_frame_bytes)
    results: list[object] = []
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    started = time.monotonic()
    for start, stop in itertools.pairwise(bounds):
        results += decoder.feed(data[start:stop])
    results.append(decoder.end())
    assert time.monotonic() - started < 2.0
    assert len(results) <= len(data) // 4 + 2
    for result in results:
        assert result is None or isinstance(
            result, ProtocolError | Hello | Lookup | Store | Load | Drain | Goodbye
        )
    return results


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=2048), st.lists(st.integers(min_value=0), max_size=8))
def test_arbitrary_bytes_only_ever_decode_to_messages_or_protocol_errors(
    data: bytes, cuts: list[int]
) -> None:
    decode_all(data, cuts)


@FUZZ
@given(st.data())
def test_mutated_bodies_never_cost_the_frames_around_them(data: st.DataObject) -> None:
    bodies = [bytearray(frames([m])[4:]) for m in CLIENT_MESSAGES]
    mutated = data.draw(st.sets(st.integers(0, len(bodies) - 1)))
    for index in mutated:
        body = bodies[index]
        for _ in range(data.draw(st.integers(1, 4))):
            position = data.draw(st.integers(0, len(body) - 1))
            body[position] = data.draw(st.integers(0, 255))
        bodies[index] = body[: data.draw(st.integers(0, len(body)))] + data.draw(st.binary(max_size=16))
    stream = b"".join(frame_of(bytes(body)) for body in bodies)
    results = decode_all(stream, data.draw(st.lists(st.integers(min_value=0), max_size=6)))
    assert results[-1] is None and len(results) == len(bodies) + 1
    for index, (result, original) in enumerate(zip(results, CLIENT_MESSAGES, strict=False)):
        if index not in mutated:
            assert result == original


@FUZZ
@given(st.binary(max_size=64), st.integers(min_value=0), st.lists(st.integers(min_value=0), max_size=6))
def test_valid_streams_with_bytes_spliced_in_anywhere_never_raise(
    noise: bytes, at: int, cuts: list[int]
) -> None:
    stream = frames(CLIENT_MESSAGES)
    position = at % (len(stream) + 1)
    decode_all(stream[:position] + noise + stream[position:], cuts)


MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
FIELD_NAMES = sorted({f for m in CLIENT_MESSAGES for f in type(m).__struct_fields__} | {"type", "x"})


@FUZZ
@given(
    st.sampled_from(["hello", "lookup", "store", "load", "drain", "goodbye", "hello_ok", "?"]),
    st.dictionaries(st.sampled_from(FIELD_NAMES), MSGPACK_VALUES, max_size=6),
)
def test_msgpack_maps_of_any_shape_only_ever_decode_to_messages_or_protocol_errors(
    tag: str, fields: dict[str, object]
) -> None:
    body = msgspec.msgpack.encode({"type": tag, **fields})
    results = decode_all(frame_of(body) + frames([Drain(request_id=1)]), [])
    assert results[1:] == [Drain(request_id=1), None]


def test_a_region_owned_by_its_peer_and_writable_only_by_it_is_accepted() -> None:
    from tieredkv_agent.api.session import region_owner_problem

    regular = stat.S_IFREG
    assert region_owner_problem(1000, regular | 0o600, 1000) is None
    assert region_owner_problem(1000, regular | 0o644, 1000) is None
    assert "belongs to uid 0" in (region_owner_problem(0, regular | 0o600, 1000) or "")
    assert "writable by other users (mode 0620)" in (region_owner_problem(1000, regular | 0o620, 1000) or "")
    assert "no regular file" in (region_owner_problem(1000, stat.S_IFIFO | 0o600, 1000) or "")
