"""Hostile bytes against a live AgentServer: every framed body gets an answer, the connection lives on,
and the server keeps serving Hellos."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.api_client_worker import BLOCK, FINGERPRINT, Region, profile, region_file, shm_dir
from tieredkv_agent.api.framing import server_decoder
from tieredkv_agent.api.protocol import PROTOCOL_VERSION, Error, Hello, HelloOk, ServerMessage
from tieredkv_agent.api.server import AgentServer
from tieredkv_agent.store.naming import KvCacheGroup, RunConfig
from tieredkv_agent.tiers.file import FileTier

pytestmark = pytest.mark.unit

CONFIG = RunConfig("org/model", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0",)),))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentServer, str, Region]]:
    root = tmp_path_factory.mktemp("fuzz")
    tier = FileTier(root_dir=root / "volume", direct=False)
    server = AgentServer(root / "agent.sock", tier, agent_version="fuzz", expected_fingerprint=FINGERPRINT)
    with region_file(4 * BLOCK, shm_dir(str(root))) as region:
        yield server, tier.namespace(CONFIG).config_dir.name, region
    server.close()
    tier.shutdown(2.0)


def replies(sock: socket.socket, count: int) -> list[ServerMessage]:
    decoder, got = server_decoder(), []
    while len(got) < count:
        data = sock.recv(65536)
        assert data, f"the agent closed the connection after {len(got)} of {count} replies"
        for item in decoder.feed(data):
            assert not isinstance(item, Exception)
            got.append(item)
    return got


def bodies() -> st.SearchStrategy[bytes]:
    """Random bytes, and msgpack maps that look like messages with wrong, missing or extra fields."""
    junk = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.binary(max_size=40),
        st.text(max_size=20),
    )
    maps = st.dictionaries(
        st.sampled_from(["type", "job_id", "keys", "slots", "namespace", "request_id", "version", "x"]),
        st.one_of(
            junk, st.sampled_from(["hello", "store", "load", "lookup", "drain"]), st.lists(junk, max_size=4)
        ),
        max_size=6,
    )
    return st.one_of(st.binary(min_size=1, max_size=300), maps.map(msgspec.msgpack.encode))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(bodies(), min_size=1, max_size=5))
def test_framed_garbage_is_answered_frame_by_frame_and_a_hello_still_succeeds(
    served: tuple[AgentServer, str, Region], garbage: list[bytes]
) -> None:
    server, name, region = served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        sock.connect(str(server.socket_path))
        sock.sendall(b"".join(len(body).to_bytes(4, "big") + body for body in garbage))
        answers = replies(sock, len(garbage))
        assert all(isinstance(answer, Error) and not answer.fatal for answer in answers)
        hello = Hello(
            version=PROTOCOL_VERSION,
            instance_id="fuzz/1",
            vllm_version="0.33.0",
            profile=profile(name),
            region_bytes=region.size,
        )
        frame = msgspec.msgpack.encode(hello)
        socket.send_fds(sock, [len(frame).to_bytes(4, "big") + frame], [region.fd])
        assert isinstance(replies(sock, 1)[0], HelloOk)
