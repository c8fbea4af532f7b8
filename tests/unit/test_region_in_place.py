"""In-place jobs: the file tier moves blocks straight between a client's mapped region and the files, with
system calls only, so a client that truncates its region fails its own jobs and never the agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
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
from tieredkv_agent.api.server import AgentServer
from tieredkv_agent.store.naming import KvCacheGroup, RunConfig
from tieredkv_agent.tiers.file import FileTier

pytestmark = pytest.mark.unit

CONFIG = RunConfig("org/inplace", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0",)),))
REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import json, os, sys
    from tieredkv_agent.engine.region import ClientRegion
    from tieredkv_agent.store.blockio import BlockFiles

    shm, volume = sys.argv[1], sys.argv[2]
    path = os.path.join(shm, "vllm_offload_inplace_child.mmap")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.unlink(path)
    os.ftruncate(fd, 4 * 4096)
    region = ClientRegion(fd, 4 * 4096, 4096)
    assert region.map()
    files = BlockFiles.for_volume(volume)
    stored = files.store(os.path.join(volume, "before.bin"), region.slot_views([1]).views[0])
    os.ftruncate(fd, 0)
    views = region.slot_views([3]).views
    after_store = files.store(os.path.join(volume, "after.bin"), views[0])
    after_load = files.load(os.path.join(volume, "before.bin"), views[0])
    print(json.dumps({
        "direct": files.direct,
        "stored": stored.status.value,
        "after_store": [after_store.status.value, after_store.errno],
        "after_load": [after_load.status.value, after_load.errno],
        "published": sorted(os.listdir(volume)),
        "shrunk": region.shrunk(),
    }))
    """
)


def test_block_io_on_a_truncated_mapped_region_fails_with_efault_and_the_process_lives(
    tmp_path: Path,
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(shm_dir(str(tmp_path))), str(volume)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},  # the code under test
    )
    assert done.returncode == 0, (done.returncode, done.stderr)  # -7 would be SIGBUS
    seen = json.loads(done.stdout)
    assert seen["stored"] == "stored"
    assert seen["after_store"] == ["io_error", 14]  # EFAULT: the kernel found no page to read
    assert seen["after_load"] == ["io_error", 14]
    assert seen["published"] == ["before.bin"]  # no partial block was published, none deleted
    assert seen["shrunk"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[AgentServer, str]]:
    tier = FileTier(root_dir=tmp_path / "volume")
    made = AgentServer(
        tmp_path / "run" / "agent.sock", tier, agent_version="t", expected_fingerprint=FINGERPRINT
    )
    yield made, tier.namespace(CONFIG).config_dir.name
    made.close()
    tier.shutdown(2.0)


def connect(server: AgentServer, name: str, fd: int, size: int, who: str) -> AgentClient:
    return AgentClient(
        server.socket_path,
        instance_id=f"p/{who}",
        vllm_version="0.33.0",
        profile=profile(name),
        region_fd=fd,
        region_bytes=size,
        timeout_s=WAIT_S,
    )


def test_file_tier_jobs_run_in_place_without_staging_and_a_shrunk_region_fails_as_region(
    tmp_path: Path, server: tuple[AgentServer, str]
) -> None:
    agent, name = server
    with region_file(8 * BLOCK, shm_dir(str(tmp_path))) as made:
        for slot in range(4):
            made.fill(slot, content(key(slot, "in")))
        with connect(agent, name, made.fd, made.size, "inplace") as client:
            client.submit_store(1, name, [key(slot, "in") for slot in range(4)], [0, 1, 2, 3])
            [stored] = wait_jobs(client, 1)
            client.submit_load(2, name, [key(slot, "in") for slot in range(4)], [7, 6, 5, 4])
            [loaded] = wait_jobs(client, 1)
            assert stored.success and loaded.success
            assert [made.slot(7 - slot) for slot in range(4)] == [content(key(s, "in")) for s in range(4)]
            assert agent.staging.idle_bytes == 0  # no staging buffer was ever taken
            os.ftruncate(made.fd, 0)
            client.submit_store(3, name, [key(9, "in")], [1])
            client.submit_load(4, name, [key(0, "in")], [2])
            after = wait_jobs(client, 2)
            assert [(d.success, d.reason) for d in after] == [(False, "region"), (False, "region")]
        assert agent.refusal_counts()["region_io"] == 2
    with (
        region_file(2 * BLOCK, shm_dir(str(tmp_path))) as fresh,
        connect(agent, name, fresh.fd, fresh.size, "next") as other,
    ):
        other.submit_load(5, name, [key(0, "in")], [1])
        [loaded] = wait_jobs(other, 1)
        assert loaded.success and fresh.slot(1) == content(key(0, "in"))
