"""The node simulator's pure translation of pod specs into local processes."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tieredkv_devcluster.sim import volumes
from tieredkv_devcluster.sim.plan import (
    Obj,
    PlanError,
    PodDirs,
    container_argv,
    container_env,
    expand,
    field_ref,
)

pytestmark = pytest.mark.unit


class DictLookup:
    """Objects by (kind, namespace, name), as the API server would return them."""

    def __init__(self, objects: dict[tuple[str, str, str], Obj]) -> None:
        self.objects = objects

    def secret(self, namespace: str, name: str) -> Obj | None:
        return self.objects.get(("secret", namespace, name))

    def config_map(self, namespace: str, name: str) -> Obj | None:
        return self.objects.get(("configMap", namespace, name))

    def pvc(self, namespace: str, name: str) -> Obj | None:
        return self.objects.get(("pvc", namespace, name))

    def pv(self, name: str) -> Obj | None:
        return self.objects.get(("pv", "", name))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


SEED_SECRET = {"kind": "Secret", "type": "Opaque", "data": {"seed": b64("1234")}}
LOOKUP = DictLookup(
    {
        ("secret", "ns", "seed"): SEED_SECRET,
        ("configMap", "ns", "cfg"): {"data": {"mode": "agent", "json": '{"a": 1}'}},
        ("pvc", "ns", "bound"): {"spec": {"volumeName": "pv1"}, "status": {"phase": "Bound"}},
        ("pvc", "ns", "pending"): {"spec": {}, "status": {"phase": "Pending"}},
        ("pv", "", "pv1"): {"spec": {"hostPath": {"path": "/srv/volumes/pv1"}}},
    }
)


def pod(**spec: Any) -> Obj:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "x"}},
        "spec": {"nodeName": "tkv-node-2", **spec},
        "status": {"podIP": "127.101.0.5"},
    }


def test_expand_replaces_defined_variables_and_keeps_unknown_ones() -> None:
    assert expand("$(A)-$(B)", {"A": "1"}) == "1-$(B)"


def test_expand_turns_a_double_dollar_into_a_literal_dollar() -> None:
    assert expand("$$(A) and $$$$", {"A": "1"}) == "$(A) and $$"


def test_field_refs_cover_names_node_ip_and_labels() -> None:
    p = pod()
    assert field_ref(p, "spec.nodeName") == "tkv-node-2"
    assert field_ref(p, "status.podIP") == "127.101.0.5"
    assert field_ref(p, "metadata.labels['app']") == "x"


def test_an_unsupported_field_ref_is_a_clear_plan_error() -> None:
    with pytest.raises(PlanError, match="unsupported fieldRef"):
        field_ref(pod(), "spec.schedulerName")


def test_env_resolves_secrets_config_maps_and_earlier_variables_in_order() -> None:
    container = {
        "name": "c",
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "PYTHONHASHSEED", "valueFrom": {"secretKeyRef": {"name": "seed", "key": "seed"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "WHERE", "value": "on $(NODE) in $(CFG_mode) mode"},
        ],
    }
    env = container_env(pod(), container, LOOKUP, {"PATH": "/bin"})
    assert env["PYTHONHASHSEED"] == "1234"
    assert env["WHERE"] == "on tkv-node-2 in agent mode"
    assert env["PATH"] == "/bin"


def test_a_missing_secret_stops_the_plan_unless_optional() -> None:
    ref = {"name": "absent", "key": "k"}
    with pytest.raises(PlanError, match="not found"):
        container_env(
            pod(), {"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": ref}}]}, LOOKUP, {}
        )
    optional = {"name": "X", "valueFrom": {"secretKeyRef": {**ref, "optional": True}}}
    assert "X" not in container_env(pod(), {"name": "c", "env": [optional]}, LOOKUP, {})


def test_a_container_without_a_command_cannot_run_locally() -> None:
    with pytest.raises(PlanError) as err:
        container_argv({"name": "c", "args": ["serve"]}, {})
    assert err.value.reason == "NoLocalCommand"


def test_argv_is_command_then_args_with_expansion() -> None:
    argv = container_argv(
        {"name": "c", "command": ["vllm", "serve"], "args": ["--port=$(PORT)"]}, {"PORT": "8000"}
    )
    assert argv == ["vllm", "serve", "--port=8000"]


def dirs(tmp_path: Path) -> PodDirs:
    return PodDirs(
        pod_root=tmp_path / "pods" / "u1", node_root=tmp_path / "nodes" / "tkv-node-2" / "hostpath"
    )


def test_host_paths_live_under_their_own_node(tmp_path: Path) -> None:
    p = pod(volumes=[{"name": "sock", "hostPath": {"path": "/var/run/tieredkv/../tieredkv/ns.c"}}])
    sources = volumes.volume_sources(p, LOOKUP, dirs(tmp_path))
    assert sources["sock"] == tmp_path / "nodes" / "tkv-node-2" / "hostpath" / "var/run/tieredkv/ns.c"


def test_a_bound_claim_maps_to_its_volume_directory_and_a_pending_one_waits(tmp_path: Path) -> None:
    bound = pod(volumes=[{"name": "store", "persistentVolumeClaim": {"claimName": "bound"}}])
    assert volumes.volume_sources(bound, LOOKUP, dirs(tmp_path))["store"] == Path("/srv/volumes/pv1")
    pending = pod(volumes=[{"name": "store", "persistentVolumeClaim": {"claimName": "pending"}}])
    with pytest.raises(PlanError, match="not bound yet"):
        volumes.volume_sources(pending, LOOKUP, dirs(tmp_path))


def test_secret_volumes_are_materialised_with_their_item_paths(tmp_path: Path) -> None:
    d = dirs(tmp_path)
    p = pod(
        volumes=[
            {"name": "s", "secret": {"secretName": "seed", "items": [{"key": "seed", "path": "x/seed"}]}}
        ]
    )
    volumes.volume_sources(p, LOOKUP, d)
    assert d.files["s"] == {"x/seed": b"1234"}


def test_an_unsupported_volume_type_is_named_in_the_error(tmp_path: Path) -> None:
    p = pod(volumes=[{"name": "n", "nfs": {"server": "x", "path": "/"}}])
    with pytest.raises(PlanError, match=r"\['nfs'\]"):
        volumes.volume_sources(p, LOOKUP, dirs(tmp_path))


def test_a_sub_path_may_not_leave_its_volume(tmp_path: Path) -> None:
    sources = {"v": tmp_path / "v"}
    escaping = {"name": "c", "volumeMounts": [{"name": "v", "mountPath": "/m", "subPath": "../../etc"}]}
    with pytest.raises(PlanError, match="leaves the volume"):
        volumes.container_mounts(pod(), escaping, sources)
    inside = {
        "name": "c",
        "volumeMounts": [{"name": "v", "mountPath": "/m", "subPath": "a/b", "readOnly": True}],
    }
    (mount,) = volumes.container_mounts(pod(), inside, sources)
    assert (mount.source, mount.target, mount.read_only) == (str(tmp_path / "v" / "a" / "b"), "/m", True)


def test_the_demo_command_line_takes_every_scenario_the_demo_knows() -> None:
    from tieredkv_devcluster import cli, demo

    for name in demo.SCENARIOS:
        assert cli.build_parser().parse_args(["demo", "--scenario", name]).scenario == name


def test_an_unknown_demo_scenario_is_refused_listing_the_known_ones() -> None:
    from tieredkv_devcluster import demo

    with pytest.raises(SystemExit, match="native: the same in native mode"):
        demo.run(Path("/nonexistent"), "nativ")
