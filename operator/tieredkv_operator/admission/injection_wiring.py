"""What the pod-injection webhook adds to the vLLM container and its pod, per cache mode (pure).

`wire()` edits a deep copy of the pod in place and either returns (with warnings) or raises
`InjectionSkipError` or `EditConflictError`; the caller then discards the copy, so a skipped pod is never
half-edited. Runs on kopf's admission handler threads: fast, pure, no API calls.

The rendered config reaches the container as the env var TIEREDKV_KV_TRANSFER_CONFIG (from the cache's
ConfigMap) in every case. How the engine gets it from there depends on the pod's annotation
`tieredkv.io/kv-transfer-config`: `args` (the default) appends `--kv-transfer-config
$(TIEREDKV_KV_TRANSFER_CONFIG)` to a command recognised as vLLM's server (`vllm_command`; anything else is
skipped); `env` reads no command at all, and the container passes the variable on itself (a shell-wrapped
`vllm serve`, or tieredkv's stand-in engine, which is not vLLM). Everything else the webhook adds (seed,
mounts, socket directory, plugin, /dev/shm) does not depend on the command.
"""

from typing import Final, Literal

from tieredkv_operator import names
from tieredkv_operator.admission.injection_model import CacheView, InjectionSkipError, SkipReason
from tieredkv_operator.admission.pod_edit import (
    JsonDict,
    child_list,
    ensure_mount,
    ensure_named,
    items,
    mount_at,
    named,
)
from tieredkv_operator.admission.vllm_command import KV_TRANSFER_FLAG, kv_flag_state, unrecognised_reason
from tieredkv_operator.quantity import format_bytes, parse_quantity
from tieredkv_operator.resources.vllm_config import VOLUME_MOUNT_PATH
from tieredkv_operator.spec import VllmMode
from tieredkv_operator.spec_vllm import VllmDevice

SEED_ENV: Final = "PYTHONHASHSEED"
CONFIG_ENV: Final = "TIEREDKV_KV_TRANSFER_CONFIG"
CONFIG_ARG: Final = f"$({CONFIG_ENV})"
"""Kubernetes expands $(VAR) in args from the container's env, so the JSON lives only in the ConfigMap."""
CONFIG_VIA_ARGS: Final = "args"
CONFIG_VIA_ENV: Final = "env"
"""Values of the pod annotation tieredkv.io/kv-transfer-config (names.ANNOTATION_KV_TRANSFER_CONFIG)."""
PYTHONPATH_ENV: Final = "PYTHONPATH"
PLUGIN_VOLUME: Final = "tieredkv-plugin"
PLUGIN_INIT_CONTAINER: Final = "tieredkv-plugin"
PLUGIN_DIR: Final = "/opt/tieredkv/python"
SOCKET_VOLUME: Final = "tieredkv-socket"
PLUGIN_INIT_SECURITY: Final[JsonDict] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
STORE_VOLUME: Final = "tieredkv-store"
SHM_VOLUME: Final = "tieredkv-shm"
SHM_PATH: Final = "/dev/shm"
MIB: Final = 1024**2
SHM_HEADROOM_BYTES: Final = 1024**3
"""/dev/shm room beyond vllm.cpuBytes for NCCL and vLLM's own shared-memory queues."""

SeedState = Literal["ok", "missing", "conflict"]


def wire(
    pod_spec: JsonDict, container: JsonDict, cache: CacheView, plugin_image: str, *, config_via: str | None
) -> list[str]:
    """Wire `container` (inside `pod_spec`) to `cache`; returns warnings, raises when the pod is skipped.

    `config_via` is the pod's tieredkv.io/kv-transfer-config annotation (None when absent).
    """
    if seed_state(container, cache) == "conflict":
        secret, key = names.seed_secret(cache.name, cache.spec)
        raise InjectionSkipError(
            SkipReason.SEED_CONFLICT,
            f"container {container.get('name')!r} sets its own {SEED_ENV}, so its block hashes would not "
            f"match the other pods'; remove it (tieredkv injects it from Secret {secret!r} key {key!r})",
        )
    ensure_named(container, "env", seed_env(cache), "environment variable")
    warnings = _wire_kv_transfer_config(container, cache, config_via)
    if _is_agent(cache):
        _wire_socket(pod_spec, container, cache)
    else:
        _wire_native(pod_spec, container, cache)
    if _is_agent(cache) or cache.spec.vllm.device is VllmDevice.CPU:
        warnings += _wire_plugin(pod_spec, container, plugin_image)
    return warnings + _wire_shm(pod_spec, container, cache.spec.vllm.cpu_bytes)


def seed_env(cache: CacheView) -> JsonDict:
    secret, key = names.seed_secret(cache.name, cache.spec)
    return {"name": SEED_ENV, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def config_env(cache: CacheView) -> JsonDict:
    ref = {"name": names.config_map_name(cache.name), "key": names.CONFIG_KEY}
    return {"name": CONFIG_ENV, "valueFrom": {"configMapKeyRef": ref}}


def seed_state(container: JsonDict, cache: CacheView) -> SeedState:
    """ok: every PYTHONHASHSEED entry is the cache's Secret ref; missing: none; conflict: anything else."""
    entries = named(container, "env", SEED_ENV)
    if not entries:
        return "missing"
    wanted = seed_env(cache)["valueFrom"]["secretKeyRef"]
    for entry in entries:
        ref = (entry.get("valueFrom") or {}).get("secretKeyRef") or {}
        exact = ref.get("name") == wanted["name"] and ref.get("key") == wanted["key"]
        if entry.get("value") not in (None, "") or not exact or ref.get("optional"):
            return "conflict"
    return "ok"


def shm_size_limit(cpu_bytes: int) -> str:
    """sizeLimit of the /dev/shm emptyDir: cpuBytes rounded up to MiB plus headroom, e.g. "33Gi"."""
    rounded = -(-cpu_bytes // MIB) * MIB
    return format_bytes(rounded + SHM_HEADROOM_BYTES)


def _is_agent(cache: CacheView) -> bool:
    return cache.spec.vllm.mode is VllmMode.AGENT


def _wire_kv_transfer_config(container: JsonDict, cache: CacheView, config_via: str | None) -> list[str]:
    if config_via == CONFIG_VIA_ENV:
        ensure_named(container, "env", config_env(cache), "environment variable")
        return []
    warnings = []
    if config_via not in (None, CONFIG_VIA_ARGS):
        warnings.append(
            f"annotation {names.ANNOTATION_KV_TRANSFER_CONFIG}={config_via!r} is neither "
            f"{CONFIG_VIA_ARGS!r} nor {CONFIG_VIA_ENV!r}; tieredkv treated it as {CONFIG_VIA_ARGS!r}"
        )
    command = [str(token) for token in container.get("command") or []]
    args = [str(token) for token in container.get("args") or []]
    name = container.get("name")
    why = unrecognised_reason(command, args)
    if why is not None:
        raise InjectionSkipError(
            SkipReason.COMMAND_NOT_RECOGNISED,
            f"container {name!r} {why}; start vLLM directly (`vllm serve ...` or `python3 -m "
            f"vllm.entrypoints.openai.api_server ...`), or annotate the pod "
            f"{names.ANNOTATION_KV_TRANSFER_CONFIG}={CONFIG_VIA_ENV} and pass "
            f"{KV_TRANSFER_FLAG} {CONFIG_ARG} yourself",
        )
    state = kv_flag_state([*command, *args], CONFIG_ARG)
    if state == "foreign":
        raise InjectionSkipError(
            SkipReason.KV_TRANSFER_CONFIG_PRESENT,
            f"container {name!r} already passes {KV_TRANSFER_FLAG}; remove it to let tieredkv configure the "
            "connector, or drop the tieredkv.io/inject label",
        )
    ensure_named(container, "env", config_env(cache), "environment variable")
    if state == "absent":
        child_list(container, "args").extend([KV_TRANSFER_FLAG, CONFIG_ARG])
    return warnings


def _wire_socket(pod_spec: JsonDict, container: JsonDict, cache: CacheView) -> None:
    """Agent mode: the node agent's socket directory."""
    host_dir = names.socket_host_dir(cache.spec.agent.socket_dir, cache.namespace, cache.name)
    socket: JsonDict
    if cache.spec.agent.socket_volume == "csi":
        attributes = {"cache": cache.name}  # the driver pairs it with the pod's own namespace
        socket = {
            "name": SOCKET_VOLUME,
            "csi": {"driver": names.CSI_DRIVER, "readOnly": True, "volumeAttributes": attributes},
        }
    else:
        socket = {"name": SOCKET_VOLUME, "hostPath": {"path": host_dir, "type": "DirectoryOrCreate"}}
    ensure_named(pod_spec, "volumes", socket, "volume")
    ensure_mount(container, {"name": SOCKET_VOLUME, "mountPath": host_dir})


def _wire_plugin(pod_spec: JsonDict, container: JsonDict, plugin_image: str) -> list[str]:
    """Agent mode or a CPU device: tieredkv's vLLM plugin package on the container's PYTHONPATH."""
    ensure_named(pod_spec, "volumes", {"name": PLUGIN_VOLUME, "emptyDir": {}}, "volume")
    ensure_named(pod_spec, "initContainers", plugin_init_container(plugin_image), "init container")
    ensure_mount(container, {"name": PLUGIN_VOLUME, "mountPath": PLUGIN_DIR})
    return _prepend_pythonpath(container)


def plugin_init_container(plugin_image: str) -> JsonDict:
    """The init container that copies the tieredkv vLLM plugin into the shared emptyDir."""
    return {
        "name": PLUGIN_INIT_CONTAINER,
        "image": plugin_image,
        "command": ["tieredkv-agent", "install-plugin", PLUGIN_DIR],
        "volumeMounts": [{"name": PLUGIN_VOLUME, "mountPath": PLUGIN_DIR}],
        # Pod Security restricted: it only copies files into the emptyDir (docs/security.md).
        "securityContext": PLUGIN_INIT_SECURITY,
    }


def _prepend_pythonpath(container: JsonDict) -> list[str]:
    entries = named(container, "env", PYTHONPATH_ENV)
    if not entries:
        child_list(container, "env").append({"name": PYTHONPATH_ENV, "value": PLUGIN_DIR})
        return []
    warnings = []
    for entry in entries:
        if entry.get("valueFrom") is not None:
            warnings.append(
                f"{PYTHONPATH_ENV} of container {container.get('name')!r} comes from valueFrom, so tieredkv "
                f"could not add {PLUGIN_DIR} to it: the tieredkv vLLM plugin loads only if that value "
                f"includes {PLUGIN_DIR}"
            )
            continue
        parts = [part for part in str(entry.get("value") or "").split(":") if part]
        if PLUGIN_DIR not in parts:
            entry["value"] = ":".join([PLUGIN_DIR, *parts])
    return warnings


def _wire_native(pod_spec: JsonDict, container: JsonDict, cache: CacheView) -> None:
    claim = {"claimName": names.pvc_name(cache.name, cache.spec)}
    ensure_named(pod_spec, "volumes", {"name": STORE_VOLUME, "persistentVolumeClaim": claim}, "volume")
    ensure_mount(container, {"name": STORE_VOLUME, "mountPath": VOLUME_MOUNT_PATH})


def _wire_shm(pod_spec: JsonDict, container: JsonDict, cpu_bytes: int) -> list[str]:
    existing = mount_at(container, SHM_PATH)
    if existing is not None:
        return _small_shm_warning(pod_spec, existing, cpu_bytes)
    empty_dir = {"medium": "Memory", "sizeLimit": shm_size_limit(cpu_bytes)}
    ensure_named(pod_spec, "volumes", {"name": SHM_VOLUME, "emptyDir": empty_dir}, "volume")
    ensure_mount(container, {"name": SHM_VOLUME, "mountPath": SHM_PATH})
    return []


def _small_shm_warning(pod_spec: JsonDict, mount: JsonDict, cpu_bytes: int) -> list[str]:
    """A warning when the pod's own /dev/shm emptyDir is limited to less than vllm.cpuBytes."""
    volumes = [v for v in items(pod_spec, "volumes") if v.get("name") == mount.get("name")]
    limit = ((volumes[0].get("emptyDir") or {}) if volumes else {}).get("sizeLimit")
    try:
        too_small = isinstance(limit, str | int) and parse_quantity(limit) < cpu_bytes
    except ValueError:
        return []
    if not too_small:
        return []
    return [
        f"the pod's own {SHM_PATH} volume {mount.get('name')!r} is limited to {limit}, less than "
        f"vllm.cpuBytes ({format_bytes(cpu_bytes)}): vLLM cannot create its CPU tier there; raise its "
        "sizeLimit or remove it to let tieredkv size it"
    ]
