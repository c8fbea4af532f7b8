"""Render the `--kv-transfer-config` JSON a TieredKVCache gives its vLLM pods (pure: no kopf, no client).

Both modes use vLLM's OffloadingConnector with TieringOffloadingSpec: a CPU primary tier of `cpu_bytes_to_use`
bytes in /dev/shm plus one secondary tier, which depends on the mode and on the vLLM release line:

* native: vLLM's own file-system tier (`fs`, `fs_python` on 0.22) rooted at the volume mount, + subPath;
* agent, lines with `module_path`: `{"type": "TieredKVTier", "module_path": "tieredkv_agent.vllm", ...}`;
* agent, older lines: `{"type": "tieredkv", ...}`, the name our vLLM general plugin registers.

`vllm.device: cpu` swaps the spec for tieredkv's CPU offloading worker (`spec_name` CPUTieringOffloadingSpec,
`spec_module_path` tieredkv_agent.vllm_cpu), a subclass of TieringOffloadingSpec: the tiers stay the same.

vLLM passes every key of a tier entry except `type`/`module_path` to the tier's constructor, so an agent tier
entry carries exactly the constructor arguments of the tieredkv tier: `socket_path`, `cache_namespace`,
`cache_name`. The names and the per-line facts come from the table shared with the agent and the plugin
(`tieredkv_common`).
"""

import copy
import hashlib
import json
import posixpath
from typing import Final

from pydantic import JsonValue

from tieredkv_common.vllm_facts import (
    AGENT_TIER_CLASS,
    AGENT_TIER_MODULE,
    AGENT_TIER_PLUGIN_TYPE,
    CONNECTOR,
    CPU_SPEC_MODULE,
    CPU_SPEC_NAME,
    ROLE,
    SPEC_NAME,
)
from tieredkv_operator.names import socket_host_dir
from tieredkv_operator.spec import TieredKVCacheSpec, VllmMode
from tieredkv_operator.spec_vllm import VllmDevice
from tieredkv_operator.vllm_lines import VllmLine, vllm_line

VOLUME_MOUNT_PATH: Final = "/mnt/tieredkv"
"""Where the webhook mounts the shared volume in native-mode vLLM containers."""
AGENT_SOCKET_FILE: Final = "agent.sock"

KvTransferConfig = dict[str, JsonValue]


def agent_socket_path(socket_dir: str, namespace: str, name: str) -> str:
    """The agent socket of one cache on a node: <socketDir>/<namespace>.<name>/agent.sock."""
    return posixpath.join(socket_host_dir(socket_dir, namespace, name), AGENT_SOCKET_FILE)


def native_root_dir(sub_path: str | None) -> str:
    """The fs tier's root_dir inside a native-mode vLLM container."""
    return posixpath.join(VOLUME_MOUNT_PATH, sub_path) if sub_path else VOLUME_MOUNT_PATH


def render_kv_transfer_config(
    spec: TieredKVCacheSpec, *, name: str, namespace: str, socket_path: str | None = None
) -> KvTransferConfig:
    """The --kv-transfer-config object for the pods of cache `namespace/name`.

    `socket_path` overrides the agent socket path (agent mode); by default it is derived from
    spec.agent.socketDir. Raises ValueError for an empty name or namespace.
    """
    if not name or not namespace:
        raise ValueError(f"a cache needs a name and a namespace, got name={name!r} namespace={namespace!r}")
    line = vllm_line(spec.vllm.version)
    if spec.vllm.mode is VllmMode.NATIVE:
        tier = _native_tier(spec, line)
    else:
        tier = _agent_tier(line, name=name, namespace=namespace, socket_path=socket_path, spec=spec)
    extra: dict[str, JsonValue] = copy.deepcopy(spec.vllm.extra_config)
    if spec.vllm.device is VllmDevice.CPU:
        extra["spec_name"] = CPU_SPEC_NAME
        extra["spec_module_path"] = CPU_SPEC_MODULE
    else:
        extra["spec_name"] = SPEC_NAME
    extra["cpu_bytes_to_use"] = spec.vllm.cpu_bytes
    if spec.vllm.block_size is not None:
        extra["block_size"] = spec.vllm.block_size
    extra["secondary_tiers"] = [tier]
    return {"kv_connector": CONNECTOR, "kv_role": ROLE, "kv_connector_extra_config": extra}


def _native_tier(spec: TieredKVCacheSpec, line: VllmLine) -> dict[str, JsonValue]:
    return {
        "type": line.fs_tier_type,
        "root_dir": native_root_dir(spec.storage.sub_path),
        "n_read_threads": spec.vllm.native_read_threads,
        "n_write_threads": spec.vllm.native_write_threads,
    }


def _agent_tier(
    line: VllmLine, *, name: str, namespace: str, socket_path: str | None, spec: TieredKVCacheSpec
) -> dict[str, JsonValue]:
    tier: dict[str, JsonValue] = (
        {"type": AGENT_TIER_CLASS, "module_path": AGENT_TIER_MODULE}
        if line.tier_module_path
        else {"type": AGENT_TIER_PLUGIN_TYPE}
    )
    tier["socket_path"] = socket_path or agent_socket_path(spec.agent.socket_dir, namespace, name)
    tier["cache_namespace"] = namespace
    tier["cache_name"] = name
    return tier


def canonical_json(rendered: KvTransferConfig) -> str:
    """Compact JSON with sorted keys: the form passed on the command line and hashed."""
    return json.dumps(rendered, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(rendered: KvTransferConfig) -> str:
    """A stable 16-hex-digit fingerprint of a rendered config (sha256 of its canonical JSON)."""
    return hashlib.sha256(canonical_json(rendered).encode("utf-8")).hexdigest()[:16]
