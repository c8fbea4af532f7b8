"""The run config in a Hello: the agent writes the namespace's config.json as vLLM's fs tier would, and
refuses a run config that does not digest to the namespace the Hello claims."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.api_client_worker import BLOCK, FINGERPRINT, WAIT_S, Region, profile, region_file, shm_dir
from tieredkv_agent.api.client import AgentClient, AgentRejected
from tieredkv_agent.api.protocol import ErrorCode
from tieredkv_agent.api.server import AgentServer
from tieredkv_agent.store.naming import KvCacheGroup, RunConfig, namespace_for
from tieredkv_agent.tiers.file import FileTier

pytestmark = pytest.mark.unit

CONFIG = RunConfig("org/other-model", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0", "l1")),))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[AgentServer]:
    tier = FileTier(root_dir=tmp_path / "volume", negative_ttl_s=60.0, direct=False)
    made = AgentServer(
        tmp_path / "run" / "agent.sock", tier, agent_version="test", expected_fingerprint=FINGERPRINT
    )
    yield made
    made.close()
    tier.shutdown(2.0)


@pytest.fixture
def region(tmp_path: Path) -> Iterator[Region]:
    with region_file(8 * BLOCK, shm_dir(str(tmp_path))) as made:
        yield made


def hello(server: AgentServer, region: Region, namespace: str, run_config: str) -> AgentClient:
    return AgentClient(
        server.socket_path,
        instance_id="pod/engine",
        vllm_version="0.33.0",
        profile=profile(namespace),
        region_fd=region.fd,
        region_bytes=region.size,
        timeout_s=WAIT_S,
        run_config=run_config,
    )


def test_a_hello_with_the_run_config_makes_the_agent_write_config_json_as_vllm_does(
    server: AgentServer, region: Region
) -> None:
    namespace = namespace_for(server.root_dir, CONFIG)
    assert not namespace.config_dir.exists()
    with hello(server, region, namespace.config_dir.name, json.dumps(namespace.fields)):
        text = (namespace.config_dir / "config.json").read_text()
    assert text == json.dumps(namespace.fields, indent=2, sort_keys=True)


def test_an_existing_config_json_is_never_replaced(server: AgentServer, region: Region) -> None:
    namespace = namespace_for(server.root_dir, CONFIG)
    namespace.config_dir.mkdir(parents=True)
    (namespace.config_dir / "config.json").write_text("written by vLLM")
    with hello(server, region, namespace.config_dir.name, json.dumps(namespace.fields)):
        pass
    assert (namespace.config_dir / "config.json").read_text() == "written by vLLM"


@pytest.mark.parametrize(
    "run_config",
    ['{"model_name": "org/other-model", "tokens_per_hash": 99}', "[1, 2]", "not json", '{"x": 1}'],
)
def test_a_run_config_that_does_not_digest_to_the_namespace_is_refused_and_nothing_is_written(
    server: AgentServer, region: Region, run_config: str
) -> None:
    namespace = namespace_for(server.root_dir, CONFIG)
    with pytest.raises(AgentRejected) as raised:
        hello(server, region, namespace.config_dir.name, run_config)
    assert raised.value.error is not None and raised.value.error.code is ErrorCode.INCOMPATIBLE
    assert "run_config" in str(raised.value)
    assert not namespace.config_dir.exists()
