"""Fixtures for the per-line tests: a real agent configured as the operator configures it, and engines whose
scheduler side is the vLLM line on the path (`make test-vllm` runs this directory once per line, with that
line's unpacked wheel sources first on PYTHONPATH)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.unit.contract_harness import SEED, AgentProcess, Cache, make_cache

vllm = pytest.importorskip("vllm")
pytest.importorskip("vllm.v1.kv_offload.tiering.manager")

from tests.vllm.lines.manager_engine import ManagerEngine  # noqa: E402  (after the skips)

LINE = ".".join(str(vllm.__version__).split(".")[:2])


@pytest.fixture(autouse=True)
def seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache's seed, as the webhook injects it into vLLM pods (vLLM reads it in init_none_hash)."""
    monkeypatch.setenv("PYTHONHASHSEED", SEED)


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    made = make_cache(tmp_path)
    made.spec = made.spec.model_copy(update={"vllm": made.spec.vllm.model_copy(update={"version": LINE})})
    return made


@pytest.fixture
def agent(cache: Cache, tmp_path: Path) -> Iterator[AgentProcess]:
    started = AgentProcess(cache, tmp_path / "agent.log")
    yield started
    started.stop()


EngineFactory = Callable[..., ManagerEngine]


@pytest.fixture
def engines(cache: Cache) -> Iterator[EngineFactory]:
    """Build engines from the operator's rendered kv-transfer-config (extra tier keys may be added)."""
    made: list[ManagerEngine] = []

    def build(name: str, **tier_keys: object) -> ManagerEngine:
        config = json.loads(cache.kv_transfer_config)
        config["kv_connector_extra_config"]["secondary_tiers"][0].update(tier_keys)
        engine = ManagerEngine(json.dumps(config), f"{name}-{len(made)}")
        made.append(engine)
        return engine

    yield build
    for engine in made:
        engine.shutdown()
