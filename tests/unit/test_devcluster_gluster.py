"""The dev cluster's GlusterFS wiring that needs no server: PV sources, per-node paths, the temp hash rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.unit.test_devcluster_plan import DictLookup, pod
from tieredkv_agent.store.blockio import BlockFiles
from tieredkv_devcluster import controlplane, gluster
from tieredkv_devcluster.paths import REPO_ROOT
from tieredkv_devcluster.sim import GLUSTER_STORAGE_CLASS, STORAGE_CLASS, volumes
from tieredkv_devcluster.sim.plan import PlanError, PodDirs
from tieredkv_devcluster.sim.storage import Backends

pytestmark = pytest.mark.unit

BLOCK = "/v/ns_r0/3fa/9c_g0/3fa9c" + "0" * 59 + ".bin"


def _node_dirs(root: Path, node: str) -> PodDirs:
    return PodDirs(pod_root=root / "pods" / "u1", node_root=root / "nodes" / node / "hostpath")


def test_a_gluster_claim_resolves_to_the_volume_through_the_pods_own_node_client(tmp_path: Path) -> None:
    lookup = DictLookup(
        {
            ("pvc", "ns", "c"): {"spec": {"volumeName": "pv1"}, "status": {"phase": "Bound"}},
            ("pv", "", "pv1"): {
                "spec": {"glusterfs": {"endpoints": "tieredkv-gluster", "path": "tkv/pvc-1"}}
            },
        }
    )
    spec = pod(volumes=[{"name": "store", "persistentVolumeClaim": {"claimName": "c"}}])
    for node in ("tkv-node-1", "tkv-node-2"):
        source = volumes.volume_sources(spec, lookup, _node_dirs(tmp_path, node))["store"]
        assert source == tmp_path / "nodes" / node / "gluster" / "tkv" / "pvc-1"


def test_a_gluster_path_never_leaves_the_nodes_gluster_directory(tmp_path: Path) -> None:
    assert volumes.gluster_path(tmp_path, "tkv/../../../etc") == tmp_path / "gluster" / "etc"
    with pytest.raises(PlanError, match="names no volume"):
        volumes.gluster_path(tmp_path, "/")


def test_the_provisioner_offers_the_gluster_class_only_with_a_volume_and_makes_it_the_default(
    tmp_path: Path,
) -> None:
    local = Backends(tmp_path / "volumes")
    assert local.classes() == (STORAGE_CLASS,)
    assert local.source(GLUSTER_STORAGE_CLASS, "pvc-1")[1] == {
        "hostPath": {"path": str(tmp_path / "volumes" / "pvc-1"), "type": "DirectoryOrCreate"}
    }
    mount = tmp_path / "nodes" / "tkv-node-1" / "gluster" / "tkv"
    both = Backends(tmp_path / "volumes", "tkv", mount)
    assert both.classes()[-1] == GLUSTER_STORAGE_CLASS  # the last class is the default one
    directory, source = both.source(GLUSTER_STORAGE_CLASS, "pvc-1")
    assert (directory, source) == (
        mount / "pvc-1",
        {"glusterfs": {"endpoints": "tieredkv-gluster", "path": "tkv/pvc-1"}},
    )


def test_temp_files_of_the_agent_and_of_vllm_hash_like_their_block_and_nothing_else_does() -> None:
    rule = re.compile(gluster.TEMP_HASH_REGEX)
    tagged = BlockFiles(direct=False, writer_tag="0123456789abcdef")._temp_suffix
    for temp in (f"{BLOCK}_8312734{tagged}", f"{BLOCK}_4611686018427387903.tmp"):  # agent, vLLM (`_<n>.tmp`)
        match = rule.fullmatch(temp)
        assert match is not None and match.group(1) == BLOCK, temp
    for other in (BLOCK, "/v/.o_direct_probe_12.tmp", "/v/ns_r0/config.json", f"{BLOCK}.tmp"):
        assert rule.fullmatch(other) is None, other


def test_the_volume_options_survive_glusters_volfile_parser_and_match_the_operations_guide() -> None:
    for value in gluster.VOLUME_OPTIONS.values():
        assert "\\" not in value and " " not in value
    guide = (REPO_ROOT / "docs" / "operations.md").read_text()
    assert f"cluster.extra-hash-regex '{gluster.TEMP_HASH_REGEX}'" in guide


def test_the_setting_decides_whether_a_cluster_runs_gluster_and_an_explicit_choice_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TIEREDKV_GLUSTER", "0")
    assert controlplane.gluster_wanted() is False
    assert controlplane.gluster_wanted(explicit=True) is True
    monkeypatch.setenv("TIEREDKV_GLUSTER", "1")
    assert controlplane.gluster_wanted() is True
    assert controlplane.gluster_wanted(explicit=False) is False
