"""The socket API end to end: a real AgentServer on a FileTier, real region files, real AgentClients."""

import multiprocessing
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.unit.api_client_worker import (
    BLOCK,
    FINGERPRINT,
    WAIT_S,
    Region,
    content,
    key,
    profile,
    region_file,
    shm_dir,
    store_in_child,
    wait_jobs,
)
from tieredkv_agent.api.client import AgentClient, AgentRejected
from tieredkv_agent.api.framing import FrameEncoder, server_decoder
from tieredkv_agent.api.protocol import (
    PROTOCOL_VERSION,
    Error,
    ErrorCode,
    Hello,
    HelloOk,
    LookupCode,
    ServerMessage,
)
from tieredkv_agent.api.server import AgentServer
from tieredkv_agent.engine.jobs import BlockJob, CompletionSink
from tieredkv_agent.store.naming import KvCacheGroup, Namespace, RunConfig
from tieredkv_agent.tiers.file import FileTier

pytestmark = pytest.mark.unit

CONFIG = RunConfig("org/model", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0",)),))


@pytest.fixture
def tier(tmp_path: Path) -> Iterator[FileTier]:
    made = FileTier(root_dir=tmp_path / "volume", negative_ttl_s=60.0, direct=False)
    yield made
    made.shutdown(2.0)


@pytest.fixture
def namespace(tier: FileTier) -> Namespace:
    return tier.namespace(CONFIG)


@pytest.fixture
def server(tmp_path: Path, tier: FileTier) -> Iterator[AgentServer]:
    made = AgentServer(
        tmp_path / "run" / "agent.sock", tier, agent_version="test", expected_fingerprint=FINGERPRINT
    )
    yield made
    made.close()


@pytest.fixture
def region(tmp_path: Path) -> Iterator[Region]:
    with region_file(8 * BLOCK, shm_dir(str(tmp_path))) as made:
        yield made


def connect(server: AgentServer, namespace: Namespace, region: Region, **overrides: object) -> AgentClient:
    options: dict[str, object] = {"profile": profile(namespace.config_dir.name), "timeout_s": WAIT_S}
    options.update(overrides)
    return AgentClient(
        server.socket_path,
        instance_id="pod/engine",
        vllm_version="0.33.0",
        region_fd=region.fd,
        region_bytes=region.size,
        **options,  # type: ignore[arg-type]
    )


def settled_lookup(client: AgentClient, name: str, keys: list[bytes]) -> tuple[list[LookupCode], bool]:
    """Look up until no key is RETRY; also says whether any answer was RETRY on the way."""
    deadline, retried = time.monotonic() + WAIT_S, False
    while True:
        codes = client.lookup(name, keys)
        if LookupCode.RETRY not in codes or time.monotonic() > deadline:
            return codes, retried
        retried = True
        time.sleep(0.01)


def test_blocks_stored_from_one_region_load_identically_into_another_at_vllm_paths(
    server: AgentServer, namespace: Namespace, region: Region, tmp_path: Path
) -> None:
    keys = [key(index) for index in range(4)]
    for index, k in enumerate(keys):
        region.fill(index, content(k))
    name = namespace.config_dir.name
    with connect(server, namespace, region) as writer:
        assert writer.hello_ok.region_slots == 8
        writer.submit_store(1, name, keys, [0, 1, 2, 3])
        [done] = wait_jobs(writer, 1)
        assert done.success and done.transfer_bytes == 4 * BLOCK
    for k in keys:
        assert Path(namespace.block_path(k)).read_bytes() == content(k)
    with region_file(8 * BLOCK, shm_dir(str(tmp_path))) as other, connect(server, namespace, other) as reader:
        reader.submit_load(9, name, keys, [7, 6, 5, 4])
        [loaded] = wait_jobs(reader, 1)
        assert loaded.success
        assert [other.slot(slot) for slot in (7, 6, 5, 4)] == [content(k) for k in keys]


def test_lookups_go_from_retry_to_miss_and_to_hit_after_a_store(
    server: AgentServer, namespace: Namespace, region: Region
) -> None:
    name, keys = namespace.config_dir.name, [key(index, "lookup") for index in range(3)]
    with connect(server, namespace, region) as client:
        codes, retried = settled_lookup(client, name, keys)
        assert retried and codes == [LookupCode.MISS] * 3
        client.submit_store(1, name, keys[:2], [0, 1])
        assert wait_jobs(client, 1)[0].success
        assert client.lookup(name, keys) == [LookupCode.HIT, LookupCode.HIT, LookupCode.MISS]


def test_a_fingerprint_mismatch_is_rejected_naming_both_fingerprints(
    server: AgentServer, namespace: Namespace, region: Region
) -> None:
    theirs = "0123456789abcdef"
    with pytest.raises(AgentRejected) as raised:
        connect(server, namespace, region, profile=profile(namespace.config_dir.name, theirs))
    assert raised.value.error is not None and raised.value.error.code is ErrorCode.INCOMPATIBLE
    assert theirs in str(raised.value) and FINGERPRINT in str(raised.value)


def test_a_fingerprint_mismatch_is_accepted_with_on_mismatch_warn(
    tmp_path: Path, tier: FileTier, namespace: Namespace, region: Region
) -> None:
    lenient = AgentServer(
        tmp_path / "warn.sock", tier, agent_version="t", expected_fingerprint=FINGERPRINT, on_mismatch="warn"
    )
    try:
        with connect(lenient, namespace, region, profile=profile(namespace.config_dir.name, "0" * 16)) as c:
            assert c.connected
    finally:
        lenient.close()


def read_reply(sock: socket.socket) -> ServerMessage:
    decoder = server_decoder()
    while True:
        data = sock.recv(65536)
        assert data, "the agent closed the connection"
        items = decoder.feed(data)
        if items:
            item = items[0]
            assert not isinstance(item, Exception)
            return item


def test_a_malformed_frame_gets_an_error_and_the_connection_then_completes_a_hello(
    server: AgentServer, namespace: Namespace, region: Region
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT_S)
        sock.connect(str(server.socket_path))
        sock.sendall(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
        error = read_reply(sock)
        assert isinstance(error, Error) and error.code is ErrorCode.MALFORMED and not error.fatal
        hello = Hello(
            version=PROTOCOL_VERSION,
            instance_id="raw",
            vllm_version="0.33.0",
            profile=profile(namespace.config_dir.name),
            region_bytes=region.size,
        )
        socket.send_fds(sock, [FrameEncoder().encode(hello)], [region.fd])
        assert isinstance(read_reply(sock), HelloOk)


def test_a_region_that_is_not_a_whole_number_of_blocks_is_refused(
    server: AgentServer, namespace: Namespace, tmp_path: Path
) -> None:
    with region_file(3 * BLOCK + 100, shm_dir(str(tmp_path))) as odd, pytest.raises(AgentRejected) as raised:
        connect(server, namespace, odd)
    assert raised.value.error is not None and raised.value.error.code is ErrorCode.BAD_REGION


def test_a_region_size_other_than_the_hello_says_is_refused(
    server: AgentServer, namespace: Namespace, region: Region
) -> None:
    with pytest.raises(AgentRejected) as raised:
        AgentClient(
            server.socket_path,
            instance_id="pod/engine",
            vllm_version="0.33.0",
            profile=profile(namespace.config_dir.name),
            region_fd=region.fd,
            region_bytes=region.size * 2,
            timeout_s=WAIT_S,
        )
    assert raised.value.error is not None and raised.value.error.code is ErrorCode.BAD_REGION


def test_a_closed_agent_fails_the_jobs_in_flight_once_and_lookups_miss(
    server: AgentServer, namespace: Namespace, region: Region, tier: FileTier
) -> None:
    name, keys = namespace.config_dir.name, [key(index, "gone") for index in range(8)]
    gate = threading.Event()
    original = tier.submit_store

    def held_store(job: BlockJob, on_done: CompletionSink) -> None:
        gate.wait(WAIT_S)
        original(job, on_done)

    tier.submit_store = held_store  # type: ignore[method-assign]
    client = connect(server, namespace, region)
    try:
        client.submit_store(5, name, keys, list(range(8)))
        time.sleep(0.1)
        threading.Thread(target=server.close, daemon=True).start()
        deadline = time.monotonic() + WAIT_S
        while client.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not client.connected
        gate.set()
        failed = wait_jobs(client, 1)
        time.sleep(0.2)
        assert [(d.job_id, d.success) for d in failed + client.poll()] == [(5, False)]
        assert client.lookup(name, keys[:2]) == [LookupCode.MISS, LookupCode.MISS]
        client.submit_load(6, name, keys[:1], [0])
        assert [(d.job_id, d.success) for d in client.poll()] == [(6, False)]
    finally:
        gate.set()
        client.close()


def test_four_clients_store_and_load_concurrently(
    server: AgentServer, namespace: Namespace, tmp_path: Path
) -> None:
    name, errors = namespace.config_dir.name, []

    def one(number: int) -> None:
        keys = [key(index, f"c{number}") for index in range(8)]
        with region_file(8 * BLOCK, shm_dir(str(tmp_path))) as mine, connect(server, namespace, mine) as c:
            for index, k in enumerate(keys):
                mine.fill(index, content(k))
            c.submit_store(1, name, keys, list(range(8)))
            stored = wait_jobs(c, 1)
            mine.map[:] = bytes(mine.size)
            c.submit_load(2, name, keys, list(reversed(range(8))))
            loaded = wait_jobs(c, 1)
            ok = stored[0].success and loaded[0].success and c.drain(WAIT_S)
            if not ok or [mine.slot(7 - i) for i in range(8)] != [content(k) for k in keys]:
                errors.append(number)

    threads = [threading.Thread(target=one, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S * 3)
    assert errors == []


def test_a_client_in_another_process_passes_its_region_and_stores(
    server: AgentServer, namespace: Namespace
) -> None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    name = namespace.config_dir.name
    child = context.Process(target=store_in_child, args=(str(server.socket_path), name, "child", 4, results))
    child.start()
    flags, drained, error = results.get(timeout=WAIT_S * 2)
    child.join(WAIT_S)
    assert error == "" and flags == [True] and drained
    for index in range(4):
        k = key(index, "child")
        assert Path(namespace.block_path(k)).read_bytes() == content(k)


def test_the_socket_is_group_accessible_and_a_stale_one_is_replaced(tmp_path: Path, tier: FileTier) -> None:
    path = tmp_path / "sockdir" / "agent.sock"
    stale = AgentServer(path, tier, agent_version="t")
    stale._listener.close()  # dies without removing its socket file; the kernel drops its lock
    stale._socket_lock.release()
    fresh = AgentServer(path, tier, agent_version="t")
    try:
        assert path.stat().st_mode & 0o777 == 0o660
        assert path.parent.stat().st_mode & 0o777 == 0o770
        stale.close()
        assert path.is_socket(), "the dead agent's shutdown removed the live agent's socket"
    finally:
        fresh.close()
    assert not path.exists()


def test_an_oversized_frame_gets_a_fatal_error_and_the_connection_is_closed(server: AgentServer) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT_S)
        sock.connect(str(server.socket_path))
        sock.sendall(struct.pack(">I", 64 * 1024 * 1024))
        error = read_reply(sock)
        assert isinstance(error, Error) and error.code is ErrorCode.FRAME_TOO_LARGE and error.fatal
        assert sock.recv(1) == b""


def test_a_dropped_connection_cancels_its_jobs_queued_blocks(
    server: AgentServer, namespace: Namespace, region: Region, tier: FileTier
) -> None:
    seen: list[BlockJob] = []
    original = tier.submit_store

    def recording_store(job: BlockJob, on_done: CompletionSink) -> None:
        seen.append(job)
        original(job, on_done)

    tier.submit_store = recording_store  # type: ignore[method-assign]
    client = connect(server, namespace, region)
    client.submit_store(1, namespace.config_dir.name, [key(1, "drop")], [0])
    deadline = time.monotonic() + WAIT_S
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen and seen[0].cancelled is not None and not seen[0].cancelled.is_set()
    client.close()
    assert seen[0].cancelled.wait(WAIT_S)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda path: Path(path).chmod(0o666), "writable by other users"),
        (lambda path: os.chown(path, 54321, -1), "belongs to uid 54321"),
    ],
)
def test_a_region_the_connecting_process_does_not_own_alone_is_refused(
    server: AgentServer, namespace: Namespace, region: Region, change: Callable[[str], None], reason: str
) -> None:
    change(region.path)
    with pytest.raises(AgentRejected, match=reason) as raised:
        connect(server, namespace, region)
    assert raised.value.error is not None and raised.value.error.code is ErrorCode.BAD_REGION
