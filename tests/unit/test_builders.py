"""The operator's pure builders: names, ownership, RBAC scope, and the agent template hash."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tieredkv_operator import names
from tieredkv_operator.names import CacheRef
from tieredkv_operator.resources import agents, rbac, storage, vllm_configmap
from tieredkv_operator.spec import TieredKVCacheSpec

pytestmark = pytest.mark.unit

CACHE = CacheRef(name="c", namespace="ns", uid="uid-1", generation=3)
BASE: dict[str, Any] = {
    "storage": {"size": "10Gi"},
    "vllm": {
        "version": "0.33",
        "mode": "native",
        "cpuBytes": "1Gi",
        "selector": {"matchLabels": {"app": "v"}},
    },
}


def spec(**overrides: Any) -> TieredKVCacheSpec:
    raw = copy.deepcopy(BASE)
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value}
    return TieredKVCacheSpec.model_validate(raw)


def template(s: TieredKVCacheSpec, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"image": "img:1", "max_bytes": 9 * 2**30, "config_hash": "abc", **kw}
    return agents.pod_template(CACHE, s, **args)


def test_the_claim_and_seed_are_owned_only_when_not_retained() -> None:
    kept, owned = spec(), spec(storage={"retainOnDelete": False})
    for build in (storage.claim, lambda c, s: storage.seed_secret(c, s, "1")):
        assert "ownerReferences" not in build(CACHE, kept)["metadata"]
        assert build(CACHE, owned)["metadata"]["ownerReferences"] == [CACHE.owner_reference()]


def test_an_adopted_claim_is_not_built_and_a_user_secret_ref_gets_no_generated_secret() -> None:
    assert storage.claim(CACHE, spec(storage={"size": None, "existingClaim": "mine"})) is None
    assert storage.seed_secret(CACHE, spec(hashSeed={"secretRef": {"name": "s"}}), "1") is None
    assert names.pvc_name("c", spec(storage={"size": None, "existingClaim": "mine"})) == "mine"


def test_the_claim_asks_for_the_size_class_and_modes_of_the_spec() -> None:
    claim = storage.claim(CACHE, spec(storage={"storageClassName": "nfs"}))
    assert claim is not None
    assert claim["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "10Gi"}},
        "volumeMode": "Filesystem",
        "storageClassName": "nfs",
    }


def test_the_agent_template_hash_is_stable_and_changes_with_anything_that_shapes_the_pod() -> None:
    s = spec()
    first = template(s)["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH]
    assert template(s)["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH] == first
    for changed in (
        template(s, config_hash="other"),
        template(s, image="img:2"),
        template(s, max_bytes=1),
        template(spec(agent={"readThreads": 3})),
    ):
        assert changed["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH] != first


def test_the_agent_gets_its_seed_from_the_secret_and_its_identity_from_the_downward_api() -> None:
    env = {e["name"]: e for e in template(spec())["spec"]["containers"][0]["env"]}
    assert env["PYTHONHASHSEED"]["valueFrom"]["secretKeyRef"] == {"name": "tieredkv-c-seed", "key": "seed"}
    assert env["TIEREDKV_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["TIEREDKV_MAX_BYTES"]["value"] == str(9 * 2**30)
    assert "value" not in env["PYTHONHASHSEED"], "the seed never appears in the pod spec"


def test_the_agent_mounts_the_claim_at_its_sub_path_and_the_socket_dir_per_cache() -> None:
    pod = template(spec(storage={"subPath": "llama"}))["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts[agents.STORE_VOLUME] == {
        "name": "store",
        "mountPath": names.STORE_MOUNT_PATH,
        "subPath": "llama",
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[agents.SOCKET_VOLUME]["hostPath"]["path"] == "/var/run/tieredkv/ns.c"
    assert volumes[agents.STORE_VOLUME]["persistentVolumeClaim"]["claimName"] == "tieredkv-c"


def test_the_daemon_set_selector_omits_labels_that_may_change() -> None:
    ds = agents.daemon_set(CACHE, spec(), template(spec()))
    selector = ds["spec"]["selector"]["matchLabels"]
    assert selector == names.selector_labels("c", "agent")
    assert "app.kubernetes.io/managed-by" not in selector and "app.kubernetes.io/version" not in selector


def test_the_agent_role_grants_only_its_lease_and_its_own_cache() -> None:
    rules = rbac.role(CACHE)["rules"]
    assert {r["resources"][0] for r in rules} == {"leases", "tieredkvcaches", "tieredkvcaches/status"}
    named = [r for r in rules if "resourceNames" in r]
    assert all(r["resourceNames"] in (["tieredkv-c-gc"], ["c"]) for r in named)
    unnamed = [r for r in rules if "resourceNames" not in r]
    assert unnamed == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]}]
    assert not any(v in r["verbs"] for r in rules for v in ("delete", "list", "watch", "*"))


def test_the_config_map_holds_the_rendered_json_and_its_hash() -> None:
    cm = vllm_configmap.config_map(CACHE, spec())
    text, digest = vllm_configmap.rendered(CACHE, spec())
    assert cm["data"] == {names.CONFIG_KEY: text}
    assert cm["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH] == digest
