"""The parts of the agent's hardening that are checked best in one process: names, modes, the RAM pool's
size, the session's byte budget, region I/O by descriptor, the accept loop and the socket lock."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.api_client_worker import (
    BLOCK,
    FINGERPRINT,
    WAIT_S,
    content,
    key,
    profile,
    region_file,
    shm_dir,
    wait_jobs,
)
from tieredkv_agent.api.client import AgentClient
from tieredkv_agent.api.connection import Connection
from tieredkv_agent.api.protocol import PROTOCOL_VERSION, CompatProfile, ErrorCode, Hello, Store
from tieredkv_agent.api.server import AgentLimits, AgentServer
from tieredkv_agent.api.session import Limits, Session
from tieredkv_agent.api.socket_lock import SocketLock, SocketPathError
from tieredkv_agent.capacity import CapacityManager, layout
from tieredkv_agent.engine.region import ClientRegion, RegionError, Staging, StagingCache, size_class
from tieredkv_agent.store.blockio import BlockFiles
from tieredkv_agent.store.naming import (
    KvCacheGroup,
    RunConfig,
    ensure_namespace,
    namespace_for,
    namespace_name_problem,
)
from tieredkv_agent.tiers.file import FileTier
from tieredkv_common.agent_limits import RAM_MAX_SLOTS

pytestmark = pytest.mark.unit

CONFIG = RunConfig("org/hard", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0",)),))


@pytest.mark.parametrize(
    "name",
    [
        "model\n_0123456789ab",
        "a\x00b_0123456789ab",
        "a/b_0123456789ab",
        ".hidden_0123456789ab",
        "x" * 250 + "_0123456789ab",
    ],
)
def test_namespace_names_with_control_characters_slashes_dots_or_too_long_are_refused(name: str) -> None:
    assert namespace_name_problem(name) is not None


def test_ordinary_namespace_names_are_served() -> None:
    assert namespace_name_problem("Qwen_Qwen3-8B_0123456789ab") is None
    assert namespace_name_problem("org_model v2+ünï_0123456789ab") is None


def test_a_namespace_directory_with_a_newline_made_by_someone_else_is_still_managed_by_gc(
    tmp_path: Path,
) -> None:
    blocks = tmp_path / "bad\nname_0123456789ab_r0" / "abc" / "de_g0"
    blocks.mkdir(parents=True)
    (blocks / f"abcde{'0' * 59}.bin").write_bytes(b"x" * BLOCK)
    assert layout.is_blocks_dir("bad\nname_0123456789ab_r0")
    report = CapacityManager(tmp_path, watch_filesystem=False).run_pass(dry_run=True)
    assert report.scan.unknown_count == 0 and report.scan.files == 1


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_block_files_and_directories_get_their_modes_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        namespace = namespace_for(tmp_path, CONFIG)
        ensure_namespace(namespace)
        path = Path(namespace.block_path(key(1)))
        assert BlockFiles(direct=False).store(str(path), b"\x01" * BLOCK).ok
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((namespace.config_dir / "config.json").stat().st_mode) == 0o644
    for directory in (path.parent, path.parent.parent, namespace.blocks_dir, namespace.config_dir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755, directory


def test_the_ram_pool_is_sized_in_bytes_whatever_block_size_a_client_declares() -> None:
    from tieredkv_agent.tiers.ram import RamPool

    pool = RamPool(64 << 20, pin=False)
    try:
        assert not pool.accepts(1, count=4096), "one-byte blocks would make 64 Mi slots"
        assert pool.stats().slots == 0, "a bypassed size must not size the pool"
        assert pool.accepts(64 * 1024)
        assert pool.stats().slots == 1024 <= RAM_MAX_SLOTS
        assert pool.stats().bypassed == 4096
    finally:
        pool.close()
    big = RamPool(1 << 40, pin=False)
    assert big.min_block_bytes == (1 << 40) // RAM_MAX_SLOTS


def test_a_session_refuses_a_job_over_its_in_flight_keys_and_takes_finished_ones_back() -> None:
    session = Session(agent_version="t", limits=Limits(max_inflight_keys=4))
    hello = Hello(
        version=PROTOCOL_VERSION,
        instance_id="p/e",
        vllm_version="0.33.0",
        profile=profile("m_0123456789ab"),
        region_bytes=8 * BLOCK,
    )
    ok = session.receive(hello, region_bytes=8 * BLOCK)
    assert ok.accepted and getattr(ok.reply, "max_inflight_keys", None) == 4

    def store(job_id: int, slots: list[int]) -> Store:
        return Store(job_id=job_id, namespace="m_0123456789ab", keys=[key(s) for s in slots], slots=slots)

    assert session.receive(store(1, [0, 1, 2])).accepted
    refused = session.receive(store(2, [3, 4]))
    assert not refused.accepted and refused.refusal == "inflight_keys"
    assert getattr(refused.reply, "code", None) is ErrorCode.LIMIT_EXCEEDED
    session.finish(1)
    assert session.in_flight_keys == 0
    assert session.receive(store(2, [3, 4, 5, 6])).accepted


def test_region_reads_and_writes_go_through_the_descriptor_and_a_shrunk_file_fails_them(
    tmp_path: Path,
) -> None:
    with region_file(4 * BLOCK, shm_dir(str(tmp_path))) as made:
        for slot in range(4):
            made.fill(slot, bytes([slot]) * BLOCK)
        region = ClientRegion(os.dup(made.fd), 4 * BLOCK, BLOCK)
        staging = Staging(3, BLOCK)
        region.read_slots([3, 1, 2], staging.base)
        assert bytes(staging.views[0]) == b"\x03" * BLOCK and bytes(staging.views[2]) == b"\x02" * BLOCK
        region.write_slots([0, 1, 2], staging.base, [0, 2])
        assert made.slot(0) == b"\x03" * BLOCK and made.slot(1) == b"\x01" * BLOCK
        assert made.slot(2) == b"\x02" * BLOCK
        os.ftruncate(made.fd, BLOCK)
        with pytest.raises(RegionError, match="short read"):
            region.read_slots([2], staging.base)
        with pytest.raises(RegionError, match="shrank"):
            region.write_slots([2], staging.base, [0])
        staging.close()
        region.release()


def test_staging_buffers_are_reused_up_to_the_idle_bound() -> None:
    cache = StagingCache(max_idle_bytes=size_class(3 * BLOCK))
    first = Staging(3, BLOCK, cache)
    mapping = first._map
    first.close()
    assert cache.idle_bytes == size_class(3 * BLOCK)
    second, third = Staging(3, BLOCK, cache), Staging(3, BLOCK, cache)
    assert second._map is mapping and third._map is not mapping
    second.close()
    third.close()  # over the idle bound: unmapped, not kept
    assert cache.idle_bytes == size_class(3 * BLOCK)


@pytest.fixture
def tier(tmp_path: Path) -> Iterator[FileTier]:
    made = FileTier(root_dir=tmp_path / "volume", direct=False)
    yield made
    made.shutdown(2.0)


def test_the_accept_loop_survives_a_connection_whose_threads_cannot_start(
    tmp_path: Path, tier: FileTier, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_start = Connection.start
    failures = iter([RuntimeError("can't start new thread")])

    def start_failing_once(self: Connection) -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        real_start(self)

    monkeypatch.setattr(Connection, "start", start_failing_once)
    server = AgentServer(
        tmp_path / "run" / "agent.sock", tier, agent_version="t", expected_fingerprint=FINGERPRINT
    )
    name = tier.namespace(CONFIG).config_dir.name
    try:
        with region_file(BLOCK, shm_dir(str(tmp_path))) as region:
            with pytest.raises(Exception):  # noqa: B017 - the first connection is dropped, however it shows
                AgentClient(
                    server.socket_path,
                    instance_id="p/first",
                    vllm_version="0.33.0",
                    profile=profile(name),
                    region_fd=region.fd,
                    region_bytes=region.size,
                    timeout_s=2.0,
                )
            with AgentClient(
                server.socket_path,
                instance_id="p/second",
                vllm_version="0.33.0",
                profile=CompatProfile(
                    namespace=name, block_bytes=BLOCK, hash_algo="sha256", none_hash_fingerprint=FINGERPRINT
                ),
                region_fd=region.fd,
                region_bytes=region.size,
                timeout_s=WAIT_S,
            ) as client:
                assert client.drain(WAIT_S)
        assert server.refusal_counts()["accept_error"] == 1
    finally:
        server.close()


def limited_server(tmp_path: Path, tier: FileTier, limits: AgentLimits) -> AgentServer:
    return AgentServer(
        tmp_path / "run" / "agent.sock",
        tier,
        agent_version="t",
        expected_fingerprint=FINGERPRINT,
        agent_limits=limits,
    )


def test_jobs_larger_than_the_staging_budgets_run_in_chunks_and_wait_for_each_other(
    tmp_path: Path, tier: FileTier
) -> None:
    limits = AgentLimits(
        max_staged_bytes=2 * BLOCK, max_total_staged_bytes=3 * BLOCK, staging_chunk_bytes=BLOCK
    )
    server = limited_server(tmp_path, tier, limits)
    name = tier.namespace(CONFIG).config_dir.name
    try:
        with (
            region_file(16 * BLOCK, shm_dir(str(tmp_path))) as a,
            region_file(16 * BLOCK, shm_dir(str(tmp_path))) as b,
        ):
            clients = []
            for made, who in ((a, "a"), (b, "b")):
                for slot in range(8):
                    made.fill(slot, content(key(slot, who)))
                clients.append(
                    AgentClient(
                        server.socket_path,
                        instance_id=f"p/{who}",
                        vllm_version="0.33.0",
                        profile=profile(name),
                        region_fd=made.fd,
                        region_bytes=made.size,
                        timeout_s=WAIT_S,
                    )
                )
            for client, who in zip(clients, "ab", strict=True):  # 4 jobs of 4 blocks: 16 blocks, budget 3
                for job in range(2):
                    keys = [key(slot, who) for slot in range(job * 4, job * 4 + 4)]
                    client.submit_store(job, name, keys, list(range(job * 4, job * 4 + 4)))
            assert all(done.success for client in clients for done in wait_jobs(client, 2))
            for client, who in zip(clients, "ab", strict=True):
                client.submit_load(9, name, [key(slot, who) for slot in range(8)], list(range(8, 16)))
                [loaded] = wait_jobs(client, 1)
                assert loaded.success
            for made, who in ((a, "a"), (b, "b")):
                assert [made.slot(8 + slot) for slot in range(8)] == [content(key(s, who)) for s in range(8)]
            for client in clients:
                client.close()
        assert server.staged_bytes == 0
    finally:
        server.close()


def test_a_client_that_leaves_with_jobs_staged_and_waiting_gives_every_budget_back(
    tmp_path: Path, tier: FileTier
) -> None:
    limits = AgentLimits(max_staged_bytes=BLOCK, max_total_staged_bytes=BLOCK, staging_chunk_bytes=BLOCK)
    server = limited_server(tmp_path, tier, limits)
    name = tier.namespace(CONFIG).config_dir.name
    try:
        with region_file(8 * BLOCK, shm_dir(str(tmp_path))) as made:
            client = AgentClient(
                server.socket_path,
                instance_id="p/leaver",
                vllm_version="0.33.0",
                profile=profile(name),
                region_fd=made.fd,
                region_bytes=made.size,
                timeout_s=WAIT_S,
            )
            for job in range(8):
                client.submit_store(
                    job, name, [key(job * 8 + slot, "leave") for slot in range(8)], list(range(8))
                )
            client.close()
        deadline = time.monotonic() + WAIT_S
        while (server.staged_bytes or server.connections) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (server.staged_bytes, server.connections) == (0, 0)
        assert server.staging.idle_bytes <= limits.max_idle_staging_bytes
    finally:
        server.close()


def test_a_second_lock_on_a_socket_path_is_refused_naming_the_holder(tmp_path: Path) -> None:
    first, second = SocketLock(tmp_path / "agent.sock"), SocketLock(tmp_path / "agent.sock")
    first.acquire()
    try:
        with pytest.raises(SocketPathError, match=f"pid {os.getpid()}"):
            second.acquire()
    finally:
        first.release()
    second.acquire()
    second.release()
