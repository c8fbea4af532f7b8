"""The pod-injection webhook's pure logic: which cache, what is added, and when a pod is left alone."""

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tieredkv_operator.admission.injection import (
    CacheView,
    InvalidCache,
    SkipReason,
    cache_view,
    inject,
    pod_seed_state,
)
from tieredkv_operator.admission.injection_wiring import shm_size_limit

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
PLUGIN_IMAGE = "ghcr.io/example/tieredkv-agent:0.1.0"
AGENT_LABELS = {"app.kubernetes.io/part-of": "chat", "tieredkv.io/tier": "shared"}
NATIVE_LABELS = {"app.kubernetes.io/name": "llama3-8b"}
SEED_CHAT = {
    "name": "PYTHONHASHSEED",
    "valueFrom": {"secretKeyRef": {"name": "tieredkv-chat-cache-seed", "key": "seed"}},
}
CONFIG_REF = {"configMapKeyRef": {"name": "tieredkv-chat-cache-vllm", "key": "kv-transfer-config.json"}}
SHM_MOUNT = {"name": "tieredkv-shm", "mountPath": "/dev/shm"}


def example(name: str, **vllm: Any) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    body["spec"]["vllm"].update(vllm)
    return body


def agent_cache(**vllm: Any) -> CacheView:
    view = cache_view(example("cache-agent.yaml", **vllm))
    assert isinstance(view, CacheView)
    return view


def native_cache(**vllm: Any) -> CacheView:
    view = cache_view(example("cache-native.yaml", **vllm))
    assert isinstance(view, CacheView)
    return view


def pod(labels: dict[str, str] | None = None, **container: Any) -> dict[str, Any]:
    vllm = {"name": "vllm", "image": "vllm/vllm-openai:v0.33.0", "command": ["vllm", "serve", "llama"]}
    vllm.update(container)
    vllm = {key: value for key, value in vllm.items() if value is not None}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "chat-0",
            "namespace": "inference",
            "labels": {"tieredkv.io/inject": "true", **(AGENT_LABELS if labels is None else labels)},
        },
        "spec": {"containers": [{"name": "sidecar", "image": "busybox"}, vllm]},
    }


def vllm_container(p: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in p["spec"]["containers"] if c["name"] == "vllm")


def test_an_agent_mode_pod_gets_seed_config_socket_plugin_and_shm() -> None:
    cache = agent_cache()
    result = inject(pod(args=["--block-size", "16"]), [cache], plugin_image=PLUGIN_IMAGE)
    assert (result.cache, result.skip_reason, result.changed) == ("chat-cache", None, True)
    sockets = "/var/run/tieredkv/inference.chat-cache"
    assert vllm_container(result.pod) == {
        "name": "vllm",
        "image": "vllm/vllm-openai:v0.33.0",
        "command": ["vllm", "serve", "llama"],
        "args": ["--block-size", "16", "--kv-transfer-config", "$(TIEREDKV_KV_TRANSFER_CONFIG)"],
        "env": [
            SEED_CHAT,
            {"name": "TIEREDKV_KV_TRANSFER_CONFIG", "valueFrom": CONFIG_REF},
            {"name": "PYTHONPATH", "value": "/opt/tieredkv/python"},
        ],
        "volumeMounts": [
            {"name": "tieredkv-socket", "mountPath": sockets},
            {"name": "tieredkv-plugin", "mountPath": "/opt/tieredkv/python"},
            SHM_MOUNT,
        ],
    }
    assert result.pod["spec"]["volumes"] == [
        {"name": "tieredkv-socket", "hostPath": {"path": sockets, "type": "DirectoryOrCreate"}},
        {"name": "tieredkv-plugin", "emptyDir": {}},
        {"name": "tieredkv-shm", "emptyDir": {"medium": "Memory", "sizeLimit": "65Gi"}},
    ]
    assert result.pod["spec"]["initContainers"] == [
        {
            "name": "tieredkv-plugin",
            "image": PLUGIN_IMAGE,
            "command": ["tieredkv-agent", "install-plugin", "/opt/tieredkv/python"],
            "volumeMounts": [{"name": "tieredkv-plugin", "mountPath": "/opt/tieredkv/python"}],
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        }
    ]
    assert result.pod["spec"]["containers"][0] == {"name": "sidecar", "image": "busybox"}
    assert result.pod["metadata"]["annotations"] == {
        "tieredkv.io/injected": "chat-cache",
        "tieredkv.io/config-hash": cache.config_hash,
    }
    assert result.pod["metadata"]["labels"]["tieredkv.io/cache"] == "chat-cache"


def test_a_native_mode_pod_gets_the_claim_at_the_volume_mount_and_nothing_agent_related() -> None:
    cache = native_cache()
    result = inject(pod(NATIVE_LABELS), [cache], plugin_image=PLUGIN_IMAGE)
    assert result.skip_reason is None
    seed_ref = {"secretKeyRef": {"name": "tieredkv-llama3-cache-seed", "key": "seed"}}
    config_ref = {"configMapKeyRef": {"name": "tieredkv-llama3-cache-vllm", "key": "kv-transfer-config.json"}}
    assert vllm_container(result.pod) == {
        "name": "vllm",
        "image": "vllm/vllm-openai:v0.33.0",
        "command": ["vllm", "serve", "llama"],
        "args": ["--kv-transfer-config", "$(TIEREDKV_KV_TRANSFER_CONFIG)"],
        "env": [
            {"name": "PYTHONHASHSEED", "valueFrom": seed_ref},
            {"name": "TIEREDKV_KV_TRANSFER_CONFIG", "valueFrom": config_ref},
        ],
        "volumeMounts": [{"name": "tieredkv-store", "mountPath": "/mnt/tieredkv"}, SHM_MOUNT],
    }
    assert result.pod["spec"]["volumes"] == [
        {"name": "tieredkv-store", "persistentVolumeClaim": {"claimName": "tieredkv-llama3-cache"}},
        {"name": "tieredkv-shm", "emptyDir": {"medium": "Memory", "sizeLimit": "33Gi"}},
    ]
    assert "initContainers" not in result.pod["spec"]
    assert result.pod["metadata"]["annotations"]["tieredkv.io/config-hash"] == cache.config_hash


@pytest.mark.parametrize("labels", [AGENT_LABELS, NATIVE_LABELS])
def test_re_admission_of_an_injected_pod_is_a_no_op(labels: dict[str, str]) -> None:
    caches = [agent_cache(), native_cache()]
    first = inject(pod(labels), caches, plugin_image=PLUGIN_IMAGE)
    second = inject(first.pod, caches, plugin_image=PLUGIN_IMAGE)
    assert first.skip_reason is None
    assert (second.pod, second.changed, second.skip_reason) == (first.pod, False, None)


def test_wiring_an_already_wired_pod_again_adds_nothing_even_without_the_stamp() -> None:
    cache = agent_cache()
    first = inject(pod(), [cache], plugin_image=PLUGIN_IMAGE).pod
    del first["metadata"]["annotations"]["tieredkv.io/injected"]
    again = inject(first, [cache], plugin_image=PLUGIN_IMAGE)
    assert again.skip_reason is None
    assert again.pod["spec"] == first["spec"]


def test_a_pod_without_the_inject_label_is_left_exactly_as_it_is() -> None:
    p = pod()
    p["metadata"]["labels"]["tieredkv.io/inject"] = "false"
    result = inject(p, [agent_cache()], plugin_image=PLUGIN_IMAGE)
    assert (result.pod, result.changed, result.skip_reason, result.cache) == (p, False, None, None)


def test_a_pod_created_with_generate_name_and_no_namespace_in_its_metadata_is_injected() -> None:
    p = pod()
    del p["metadata"]["name"], p["metadata"]["namespace"]
    p["metadata"]["generateName"] = "chat-"
    result = inject(p, [agent_cache()], plugin_image=PLUGIN_IMAGE)
    assert result.skip_reason is None
    assert result.pod["metadata"]["generateName"] == "chat-"
    assert "name" not in result.pod["metadata"]


def skipped(p: dict[str, Any], caches: list[CacheView | InvalidCache], reason: SkipReason) -> dict[str, Any]:
    """Inject, check the skip reason, and check that nothing but the skip stamps changed."""
    before = copy.deepcopy(p)
    result = inject(p, caches, plugin_image=PLUGIN_IMAGE)
    assert result.skip_reason is reason, result.message
    assert p == before, "the input pod must not be mutated"
    assert result.pod["spec"] == before["spec"]
    assert result.pod["metadata"]["annotations"]["tieredkv.io/skip-reason"] == reason.value
    assert result.changed and result.message
    labels = dict(result.pod["metadata"]["labels"])
    if result.cache is not None:
        assert labels.pop("tieredkv.io/cache") == result.cache
    assert labels == before["metadata"]["labels"]
    return result.pod


def annotated(p: dict[str, Any], cache: str) -> dict[str, Any]:
    p["metadata"]["annotations"] = {"tieredkv.io/cache": cache}
    return p


def elsewhere() -> CacheView | InvalidCache:
    body = example("cache-agent.yaml")
    body["metadata"]["namespace"] = "elsewhere"
    return cache_view(body)


@pytest.mark.parametrize(
    ("p", "caches"),
    [
        (pod({"app": "other"}), [agent_cache(), native_cache()]),
        (annotated(pod(), "nope"), [agent_cache()]),
        (pod(), [elsewhere()]),
    ],
    ids=["no-selector-matches", "annotation-names-a-missing-cache", "cache-in-another-namespace"],
)
def test_a_pod_without_a_cache_in_its_namespace_is_skipped_as_cache_not_found(
    p: dict[str, Any], caches: list[CacheView | InvalidCache]
) -> None:
    out = skipped(p, caches, SkipReason.CACHE_NOT_FOUND)
    assert "tieredkv.io/cache" not in out["metadata"]["labels"]


def test_a_pod_naming_a_cache_whose_selector_does_not_match_is_skipped_as_not_selected() -> None:
    skipped(annotated(pod(), "llama3-cache"), [agent_cache(), native_cache()], SkipReason.CACHE_NOT_SELECTED)


def test_two_selecting_caches_are_ambiguous_until_the_annotation_picks_one() -> None:
    both = {**AGENT_LABELS, **NATIVE_LABELS}
    skipped(pod(both), [agent_cache(), native_cache()], SkipReason.CACHE_AMBIGUOUS)
    result = inject(annotated(pod(both), "llama3-cache"), [agent_cache(), native_cache()], plugin_image="x")
    assert (result.cache, result.skip_reason) == ("llama3-cache", None)


def test_a_pod_choosing_an_invalid_cache_is_skipped_as_cache_invalid_by_selector_or_by_name() -> None:
    body = example("cache-agent.yaml", version="0.40")
    invalid = cache_view(body)
    assert isinstance(invalid, InvalidCache)
    assert any("supported lines" in error for error in invalid.errors)
    skipped(pod(), [invalid], SkipReason.CACHE_INVALID)
    skipped(annotated(pod(), "chat-cache"), [invalid], SkipReason.CACHE_INVALID)


def test_a_pod_without_the_named_container_is_skipped_as_container_not_found() -> None:
    skipped(pod(), [agent_cache(container="engine")], SkipReason.CONTAINER_NOT_FOUND)


@pytest.mark.parametrize(
    "seed",
    [
        {"name": "PYTHONHASHSEED", "value": "0"},
        {"name": "PYTHONHASHSEED", "valueFrom": {"secretKeyRef": {"name": "other", "key": "seed"}}},
        {
            "name": "PYTHONHASHSEED",
            "valueFrom": {"secretKeyRef": {"name": "tieredkv-chat-cache-seed", "key": "x"}},
        },
    ],
)
def test_a_pod_with_its_own_seed_is_skipped_as_seed_conflict_and_its_spec_untouched(
    seed: dict[str, Any],
) -> None:
    out = skipped(pod(env=[seed]), [agent_cache()], SkipReason.SEED_CONFLICT)
    assert out["metadata"]["labels"]["tieredkv.io/cache"] == "chat-cache"


def test_a_pod_that_already_carries_the_caches_seed_ref_is_injected_without_a_duplicate() -> None:
    result = inject(pod(env=[SEED_CHAT]), [agent_cache()], plugin_image=PLUGIN_IMAGE)
    assert result.skip_reason is None
    assert [e["name"] for e in vllm_container(result.pod)["env"]].count("PYTHONHASHSEED") == 1


@pytest.mark.parametrize(
    ("command", "args"),
    [
        (["sh", "-c", "vllm serve llama"], None),
        (["/bin/bash", "-c"], ["exec vllm serve llama"]),
        (None, ["sh", "-c", "vllm serve llama"]),
        (["vllm", "bench", "latency"], None),
        (["python3", "train.py"], None),
        (["python3", "-m", "vllm.entrypoints.cli.main", "bench"], None),
        (["/usr/bin/start.sh"], ["llama"]),
        (["python", "-m", "tieredkv_agent.standin"], ["--prompt", "1:256"]),
    ],
)
def test_commands_that_are_not_a_direct_vllm_server_are_skipped(command: Any, args: Any) -> None:
    skipped(pod(command=command, args=args), [agent_cache()], SkipReason.COMMAND_NOT_RECOGNISED)


@pytest.mark.parametrize(
    ("command", "args"),
    [
        (["/usr/local/bin/vllm", "serve"], ["llama", "--port", "8000"]),
        (["python3", "-m", "vllm.entrypoints.openai.api_server"], ["--model", "llama"]),
        (["python3.12", "-u", "-X", "dev", "-m", "vllm.entrypoints.openai.api_server"], None),
        (["python", "-m", "vllm.entrypoints.cli.main", "serve", "llama"], None),
        (None, ["--model", "llama"]),
    ],
)
def test_direct_vllm_server_commands_get_the_flag_appended_to_args(command: Any, args: Any) -> None:
    result = inject(pod(command=command, args=args), [agent_cache()], plugin_image=PLUGIN_IMAGE)
    assert result.skip_reason is None, result.message
    assert vllm_container(result.pod)["args"] == [
        *(args or []),
        "--kv-transfer-config",
        "$(TIEREDKV_KV_TRANSFER_CONFIG)",
    ]


def config_via(p: dict[str, Any], value: str) -> dict[str, Any]:
    p["metadata"]["annotations"] = {"tieredkv.io/kv-transfer-config": value}
    return p


STANDIN = {"command": ["python", "-m", "tieredkv_agent.standin"], "args": ["--prompt", "1:256"]}


def test_a_pod_that_takes_the_config_from_env_gets_everything_but_a_changed_command() -> None:
    cache = agent_cache()
    result = inject(config_via(pod(**STANDIN), "env"), [cache], plugin_image=PLUGIN_IMAGE)
    assert (result.skip_reason, result.warnings) == (None, ())
    container = vllm_container(result.pod)
    assert (container["command"], container["args"]) == (STANDIN["command"], STANDIN["args"])
    assert container["env"] == [
        SEED_CHAT,
        {"name": "TIEREDKV_KV_TRANSFER_CONFIG", "valueFrom": CONFIG_REF},
        {"name": "PYTHONPATH", "value": "/opt/tieredkv/python"},
    ]
    wired = inject(pod(args=["--block-size", "16"]), [cache], plugin_image=PLUGIN_IMAGE).pod
    assert container["volumeMounts"] == vllm_container(wired)["volumeMounts"]
    assert result.pod["spec"]["volumes"] == wired["spec"]["volumes"]
    assert result.pod["spec"]["initContainers"] == wired["spec"]["initContainers"]
    assert result.pod["metadata"]["annotations"]["tieredkv.io/injected"] == "chat-cache"


def test_with_the_env_annotation_a_shell_passing_its_own_flag_is_injected_and_left_as_written() -> None:
    script = 'exec vllm serve llama --kv-transfer-config "$TIEREDKV_KV_TRANSFER_CONFIG"'
    p = config_via(pod(NATIVE_LABELS, command=["sh", "-c", script]), "env")
    result = inject(p, [native_cache()], plugin_image=PLUGIN_IMAGE)
    assert result.skip_reason is None
    assert vllm_container(result.pod)["command"] == ["sh", "-c", script]
    assert "args" not in vllm_container(result.pod)


def test_with_the_env_annotation_the_configs_env_var_set_by_the_pod_itself_is_kept_or_conflicts() -> None:
    own = {"name": "TIEREDKV_KV_TRANSFER_CONFIG", "valueFrom": CONFIG_REF}
    result = inject(config_via(pod(env=[own], **STANDIN), "env"), [agent_cache()], plugin_image=PLUGIN_IMAGE)
    assert result.skip_reason is None
    assert [e["name"] for e in vllm_container(result.pod)["env"]].count("TIEREDKV_KV_TRANSFER_CONFIG") == 1
    other = {"name": "TIEREDKV_KV_TRANSFER_CONFIG", "value": "{}"}
    p = config_via(pod(env=[other], **STANDIN), "env")
    skipped(p, [agent_cache()], SkipReason.VOLUME_CONFLICT)


def test_an_unknown_config_annotation_value_is_treated_as_args_with_a_warning() -> None:
    result = inject(config_via(pod(), "environment"), [agent_cache()], plugin_image=PLUGIN_IMAGE)
    assert result.skip_reason is None
    assert vllm_container(result.pod)["args"][-2:] == [
        "--kv-transfer-config",
        "$(TIEREDKV_KV_TRANSFER_CONFIG)",
    ]
    assert len(result.warnings) == 1 and "'environment'" in result.warnings[0]


def test_the_stand_in_engine_without_the_env_annotation_is_skipped_with_a_hint_to_use_it() -> None:
    result = inject(pod(**STANDIN), [agent_cache()], plugin_image=PLUGIN_IMAGE)
    assert result.skip_reason is SkipReason.COMMAND_NOT_RECOGNISED
    assert "tieredkv.io/kv-transfer-config=env" in result.message


@pytest.mark.parametrize(
    "flag",
    [
        ["--kv-transfer-config", '{"kv_connector":"LMCacheConnectorV1"}'],
        ['--kv-transfer-config={"kv_connector":"X"}'],
        ["--kv_transfer_config", "{}"],
        ["--kv-transfer-config.kv_connector", "X"],
    ],
)
def test_a_pod_with_its_own_kv_transfer_config_is_skipped(flag: list[str]) -> None:
    skipped(pod(args=["llama", *flag]), [agent_cache()], SkipReason.KV_TRANSFER_CONFIG_PRESENT)


@pytest.mark.parametrize(
    "change",
    [
        {"volumes": [{"name": "tieredkv-plugin", "configMap": {"name": "mine"}}]},
        {
            "volumes": [{"name": "dshm", "emptyDir": {}}],
            "mounts": [{"name": "dshm", "mountPath": "/opt/tieredkv/python"}],
        },
        {"env": [{"name": "TIEREDKV_KV_TRANSFER_CONFIG", "value": "{}"}]},
        {"init": [{"name": "tieredkv-plugin", "image": "old:0.0.1"}]},
    ],
)
def test_names_or_paths_taken_by_something_else_are_skipped_as_volume_conflict(
    change: dict[str, Any],
) -> None:
    p = pod(env=change.get("env", []), volumeMounts=change.get("mounts", []))
    p["spec"]["volumes"] = change.get("volumes", [])
    p["spec"]["initContainers"] = change.get("init", [])
    skipped(p, [agent_cache()], SkipReason.VOLUME_CONFLICT)


def test_an_identical_volume_already_in_the_pod_is_reused_not_duplicated() -> None:
    p = pod(NATIVE_LABELS)
    p["spec"]["volumes"] = [
        {
            "name": "tieredkv-store",
            "persistentVolumeClaim": {"claimName": "tieredkv-llama3-cache", "readOnly": False},
        }
    ]
    result = inject(p, [native_cache()], plugin_image=PLUGIN_IMAGE)
    assert result.skip_reason is None
    assert [v["name"] for v in result.pod["spec"]["volumes"]] == ["tieredkv-store", "tieredkv-shm"]


@pytest.mark.parametrize(
    ("labels", "selected"),
    [
        ({"app.kubernetes.io/part-of": "chat", "tieredkv.io/tier": "shared", "gpu": "l40s"}, True),
        ({"app.kubernetes.io/part-of": "chat", "tieredkv.io/tier": "private", "gpu": "a100"}, False),
        ({"app.kubernetes.io/part-of": "chat"}, False),
        ({"app.kubernetes.io/part-of": "chat", "gpu": "a100"}, True),
        ({"app.kubernetes.io/part-of": "chat", "gpu": "h100"}, False),
        ({"app.kubernetes.io/part-of": "chat", "gpu": "a100", "canary": "1"}, False),
    ],
)
def test_match_expressions_follow_kubernetes_selector_semantics(
    labels: dict[str, str], selected: bool
) -> None:
    cache = agent_cache(
        selector={
            "matchLabels": {"app.kubernetes.io/part-of": "chat"},
            "matchExpressions": [
                {"key": "tieredkv.io/tier", "operator": "NotIn", "values": ["private"]},
                {"key": "gpu", "operator": "In", "values": ["a100", "l40s"]},
                {"key": "gpu", "operator": "Exists"},
                {"key": "canary", "operator": "DoesNotExist"},
            ],
        }
    )
    result = inject(pod(labels), [cache], plugin_image=PLUGIN_IMAGE)
    assert (result.skip_reason is None) is selected


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        ("/app/lib", "/opt/tieredkv/python:/app/lib"),
        ("/app/lib:/usr/lib/extra", "/opt/tieredkv/python:/app/lib:/usr/lib/extra"),
        ("/usr/lib/x:/opt/tieredkv/python", "/usr/lib/x:/opt/tieredkv/python"),
        ("", "/opt/tieredkv/python"),
    ],
)
def test_an_existing_literal_pythonpath_gets_the_plugin_dir_prepended(existing: str, expected: str) -> None:
    result = inject(pod(env=[{"name": "PYTHONPATH", "value": existing}]), [agent_cache()], plugin_image="x")
    env = vllm_container(result.pod)["env"]
    assert [e for e in env if e["name"] == "PYTHONPATH"] == [{"name": "PYTHONPATH", "value": expected}]


def test_a_pythonpath_from_value_from_is_left_alone_with_a_warning() -> None:
    path = {"name": "PYTHONPATH", "valueFrom": {"configMapKeyRef": {"name": "env", "key": "path"}}}
    result = inject(pod(env=[path]), [agent_cache()], plugin_image=PLUGIN_IMAGE)
    assert result.skip_reason is None
    assert path in vllm_container(result.pod)["env"]
    assert result.warnings and "PYTHONPATH" in result.message and "/opt/tieredkv/python" in result.warnings[0]


@pytest.mark.parametrize(
    ("cpu_bytes", "limit"),
    [(8 * 1024**3, "9Gi"), ("32Gi", "33Gi"), (10**9, "1978Mi"), (1, "1025Mi")],
)
def test_dev_shm_is_sized_to_cpu_bytes_rounded_up_to_mib_plus_headroom(cpu_bytes: Any, limit: str) -> None:
    result = inject(pod(NATIVE_LABELS), [native_cache(cpuBytes=cpu_bytes)], plugin_image=PLUGIN_IMAGE)
    shm = next(v for v in result.pod["spec"]["volumes"] if v["name"] == "tieredkv-shm")
    assert shm == {"name": "tieredkv-shm", "emptyDir": {"medium": "Memory", "sizeLimit": limit}}
    assert shm_size_limit(native_cache(cpuBytes=cpu_bytes).spec.vllm.cpu_bytes) == limit


@pytest.mark.parametrize(("size_limit", "warns"), [("64Gi", False), ("1Gi", True), (None, False)])
def test_an_existing_dev_shm_mount_is_respected_and_a_too_small_one_warned_about(
    size_limit: str | None, warns: bool
) -> None:
    p = pod(NATIVE_LABELS, volumeMounts=[{"name": "dshm", "mountPath": "/dev/shm/"}])
    p["spec"]["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": size_limit}}]
    result = inject(p, [native_cache()], plugin_image=PLUGIN_IMAGE)
    assert result.skip_reason is None
    assert [v["name"] for v in result.pod["spec"]["volumes"]] == ["dshm", "tieredkv-store"]
    assert [m["name"] for m in vllm_container(result.pod)["volumeMounts"]] == ["dshm", "tieredkv-store"]
    assert bool(result.warnings) is warns


def test_a_stale_skip_reason_is_removed_when_the_pod_is_injected() -> None:
    p = pod()
    p["metadata"]["annotations"] = {"tieredkv.io/skip-reason": "cache-not-found", "team": "chat"}
    result = inject(p, [agent_cache()], plugin_image=PLUGIN_IMAGE)
    assert "tieredkv.io/skip-reason" not in result.pod["metadata"]["annotations"]
    assert result.pod["metadata"]["annotations"]["team"] == "chat"


def test_pod_seed_state_tells_ok_missing_and_conflict_apart() -> None:
    cache = agent_cache()
    assert pod_seed_state(inject(pod(), [cache], plugin_image="x").pod, cache) == "ok"
    assert pod_seed_state(pod(), cache) == "missing"
    assert pod_seed_state(pod(env=[{"name": "PYTHONHASHSEED", "value": "0"}]), cache) == "conflict"
    assert pod_seed_state(pod(), agent_cache(container="engine")) == "missing"


def test_the_quickstarts_stand_in_engines_are_injected_without_being_taken_for_vllm() -> None:
    docs = [doc for doc in yaml.safe_load_all((EXAMPLES / "quickstart.yaml").read_text()) if doc]
    cache = cache_view(next(doc for doc in docs if doc["kind"] == "TieredKVCache"))
    assert isinstance(cache, CacheView)
    for deployment in (doc for doc in docs if doc["kind"] == "Deployment"):
        template = copy.deepcopy(deployment["spec"]["template"])
        engine = {"metadata": {**template["metadata"], "namespace": "quickstart"}, "spec": template["spec"]}
        result = inject(engine, [cache], plugin_image=PLUGIN_IMAGE)
        assert (result.skip_reason, result.warnings) == (None, ()), result.message
        before, after = template["spec"]["containers"][0], vllm_container(result.pod)
        assert (after["command"], after["args"]) == (before["command"], before["args"])
        env = {entry["name"]: entry for entry in after["env"]}
        assert env["PYTHONHASHSEED"]["valueFrom"]["secretKeyRef"]["name"] == "tieredkv-shared-seed"
        assert env["TIEREDKV_KV_TRANSFER_CONFIG"] == before["env"][0]
        without = copy.deepcopy(engine)
        del without["metadata"]["annotations"]["tieredkv.io/kv-transfer-config"]
        skipped(without, [cache], SkipReason.COMMAND_NOT_RECOGNISED)


def test_a_native_mode_pod_on_a_cpu_device_gets_the_plugin_for_the_cpu_offloading_worker() -> None:
    cache = native_cache(version="0.32", device="cpu")
    result = inject(pod(NATIVE_LABELS), [cache], plugin_image=PLUGIN_IMAGE)
    assert result.skip_reason is None
    container = vllm_container(result.pod)
    assert {"name": "PYTHONPATH", "value": "/opt/tieredkv/python"} in container["env"]
    assert {"name": "tieredkv-plugin", "mountPath": "/opt/tieredkv/python"} in container["volumeMounts"]
    assert {"name": "tieredkv-store", "mountPath": "/mnt/tieredkv"} in container["volumeMounts"]
    assert [c["name"] for c in result.pod["spec"]["initContainers"]] == ["tieredkv-plugin"]
    assert all("hostPath" not in volume for volume in result.pod["spec"]["volumes"])
