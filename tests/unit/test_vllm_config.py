"""The --kv-transfer-config renderer, checked against golden files per vLLM release line and mode.

The golden files live in tests/unit/golden/vllm_config/<line>-<mode>.json. After an intended change to the
rendered config, rewrite them and review the diff:

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_vllm_config.py
"""

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tieredkv_operator.resources.vllm_config import (
    agent_socket_path,
    canonical_json,
    config_hash,
    render_kv_transfer_config,
)
from tieredkv_operator.spec import TieredKVCache, TieredKVCacheSpec, VllmMode
from tieredkv_operator.vllm_lines import SUPPORTED_LINES, supported_lines

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).resolve().parent / "golden" / "vllm_config"
DOCS = Path(__file__).resolve().parents[2] / "docs"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def make_spec(line: str, mode: VllmMode, **vllm: Any) -> TieredKVCacheSpec:
    """The spec every golden file is rendered from: a subPath, a block size and one extra key."""
    return TieredKVCacheSpec.model_validate(
        {
            "storage": {"size": "1Ti", "subPath": "llama3"},
            "vllm": {
                "selector": {"matchLabels": {"app": "llama3"}},
                "version": line,
                "mode": mode,
                "cpuBytes": "32Gi",
                "blockSize": 16,
                "extraConfig": {"eviction_policy": "lru"},
                **vllm,
            },
        }
    )


def render(spec: TieredKVCacheSpec) -> dict[str, Any]:
    return render_kv_transfer_config(spec, name="llama3-cache", namespace="inference")


@pytest.mark.parametrize("mode", list(VllmMode))
@pytest.mark.parametrize("line", supported_lines())
def test_the_rendered_config_matches_its_golden_file(line: str, mode: VllmMode) -> None:
    rendered = render(make_spec(line, mode))
    path = GOLDEN / f"{line}-{mode}.json"
    text = json.dumps(rendered, indent=2, sort_keys=True) + "\n"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path.name} is missing; run UPDATE_GOLDEN=1 pytest {Path(__file__).name}"
    assert json.loads(path.read_text()) == rendered


def test_every_golden_file_belongs_to_a_supported_line_and_mode() -> None:
    expected = {f"{line}-{mode}.json" for line in supported_lines() for mode in VllmMode}
    assert {path.name for path in GOLDEN.glob("*.json")} == expected


def test_native_mode_renders_vllms_fs_tier_on_the_volume_mount() -> None:
    config = render(make_spec("0.33", VllmMode.NATIVE, nativeReadThreads=32, nativeWriteThreads=8))
    assert config["kv_connector"] == "OffloadingConnector"
    assert config["kv_role"] == "kv_both"
    extra = config["kv_connector_extra_config"]
    assert extra["spec_name"] == "TieringOffloadingSpec"
    assert extra["cpu_bytes_to_use"] == 32 * 1024**3
    assert extra["block_size"] == 16
    assert extra["eviction_policy"] == "lru"
    assert extra["secondary_tiers"] == [
        {"type": "fs", "root_dir": "/mnt/tieredkv/llama3", "n_read_threads": 32, "n_write_threads": 8}
    ]


def test_the_oldest_line_names_the_fs_tier_fs_python() -> None:
    tier = render(make_spec("0.22", VllmMode.NATIVE))["kv_connector_extra_config"]["secondary_tiers"][0]
    assert tier["type"] == "fs_python"
    assert all(render(make_spec(line, VllmMode.NATIVE)) for line in supported_lines())


def test_without_a_sub_path_the_fs_tier_is_rooted_at_the_mount() -> None:
    spec = TieredKVCacheSpec.model_validate(
        {
            "storage": {"size": "1Ti"},
            "vllm": {"selector": {"matchLabels": {"a": "b"}}, "version": "0.30", "cpuBytes": 1},
        }
    )
    tier = render(spec)["kv_connector_extra_config"]["secondary_tiers"][0]
    assert tier["root_dir"] == "/mnt/tieredkv"
    assert "block_size" not in render(spec)["kv_connector_extra_config"]


@pytest.mark.parametrize("line", supported_lines())
def test_agent_mode_renders_the_tieredkv_tier_for_each_line(line: str) -> None:
    tier = render(make_spec(line, VllmMode.AGENT))["kv_connector_extra_config"]["secondary_tiers"][0]
    identity = {
        "socket_path": "/var/run/tieredkv/inference.llama3-cache/agent.sock",
        "cache_namespace": "inference",
        "cache_name": "llama3-cache",
    }
    if SUPPORTED_LINES[line].tier_module_path:
        assert tier == {"type": "TieredKVTier", "module_path": "tieredkv_agent.vllm", **identity}
    else:
        assert tier == {"type": "tieredkv", **identity}


def test_an_explicit_socket_path_wins_over_the_socket_dir() -> None:
    spec = make_spec("0.33", VllmMode.AGENT)
    config: dict[str, Any] = render_kv_transfer_config(
        spec, name="c", namespace="ns", socket_path="/run/x/agent.sock"
    )
    assert config["kv_connector_extra_config"]["secondary_tiers"][0]["socket_path"] == "/run/x/agent.sock"
    assert agent_socket_path("/var/run/tieredkv", "ns", "c") == "/var/run/tieredkv/ns.c/agent.sock"


def test_a_cache_without_name_or_namespace_cannot_be_rendered() -> None:
    with pytest.raises(ValueError, match="needs a name and a namespace"):
        render_kv_transfer_config(make_spec("0.33", VllmMode.NATIVE), name="", namespace="ns")


def test_rendering_leaves_the_spec_untouched() -> None:
    spec = make_spec("0.33", VllmMode.NATIVE, extraConfig={"nested": {"a": [1]}})
    config = render(spec)
    config["kv_connector_extra_config"]["nested"]["a"].append(2)
    assert spec.vllm.extra_config == {"nested": {"a": [1]}}


def test_the_config_hash_is_stable_and_independent_of_key_order() -> None:
    config = render(make_spec("0.33", VllmMode.NATIVE))
    reordered = json.loads(json.dumps(config, sort_keys=False))
    reordered = dict(reversed(list(reordered.items())))
    assert config_hash(config) == config_hash(reordered)
    assert len(config_hash(config)) == 16
    assert int(config_hash(config), 16) >= 0
    assert canonical_json(config).startswith('{"kv_connector":"OffloadingConnector"')


def test_the_config_hash_changes_with_the_config() -> None:
    hashes = {config_hash(render(make_spec(line, mode))) for line in supported_lines() for mode in VllmMode}
    native_lines = {config_hash(render(make_spec(line, VllmMode.NATIVE))) for line in supported_lines()}
    assert len(native_lines) == 2  # fs_python (0.22) and fs (all later lines)
    assert len(hashes) == 4  # plus agent mode with and without module_path


def test_the_rendered_example_in_the_configuration_guide_is_current() -> None:
    cache = TieredKVCache.model_validate(yaml.safe_load((DOCS / "examples" / "cache-agent.yaml").read_text()))
    name, namespace = cache.metadata["name"], cache.metadata["namespace"]
    assert isinstance(name, str) and isinstance(namespace, str)
    first_json_block = re.search(r"```json\n(.*?)```", (DOCS / "configuration.md").read_text(), re.DOTALL)
    assert first_json_block is not None
    documented = json.loads(first_json_block.group(1))
    assert documented == render_kv_transfer_config(cache.spec, name=name, namespace=namespace)


@pytest.mark.parametrize("mode", list(VllmMode))
def test_a_cpu_device_swaps_in_tieredkvs_cpu_offloading_spec_and_keeps_the_tiers(mode: VllmMode) -> None:
    gpu = render(make_spec("0.32", mode))
    cpu = render(make_spec("0.32", mode, device="cpu"))
    extra = cpu["kv_connector_extra_config"]
    assert (extra["spec_name"], extra["spec_module_path"]) == (
        "CPUTieringOffloadingSpec",
        "tieredkv_agent.vllm_cpu",
    )
    assert extra["secondary_tiers"] == gpu["kv_connector_extra_config"]["secondary_tiers"]
    assert "spec_module_path" not in gpu["kv_connector_extra_config"]


def test_a_cpu_device_is_refused_on_a_line_the_cpu_worker_does_not_support() -> None:
    with pytest.raises(ValueError, match=r"vllm.device=cpu needs a vLLM line .* \(0\.32\), not 0\.33"):
        make_spec("0.33", VllmMode.NATIVE, device="cpu")


def test_spec_module_path_stays_reserved_and_points_at_the_device_field() -> None:
    with pytest.raises(ValueError, match=r"vllm\.device=cpu"):
        make_spec("0.32", VllmMode.NATIVE, extraConfig={"spec_module_path": "x"})
