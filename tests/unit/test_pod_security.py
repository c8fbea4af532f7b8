"""Pod Security Standards: every rule of the `baseline` and `restricted` table catches a pod that breaks it,
and the pods tieredkv makes are held to them: the operator restricted; injected vLLM pods of a csi cache
baseline, and restricted for everything tieredkv adds; what does not pass is named here and in
docs/security.md (the CSI node plugin, and the per-cache agents and hostPath-socket pods)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.unit.chart_helpers import SCENARIOS, render
from tests.unit.test_injection import PLUGIN_IMAGE, agent_cache, example, pod
from tieredkv_devcluster.podsecurity import BASELINE, RESTRICTED, evaluate, rules_broken
from tieredkv_operator.admission.injection import inject
from tieredkv_operator.admission.injection_model import CacheView, cache_view
from tieredkv_operator.names import CacheRef
from tieredkv_operator.resources import agents
from tieredkv_operator.spec import TieredKVCacheSpec

pytestmark = pytest.mark.unit

Obj = dict[str, Any]
RESTRICTED_CONTAINER_CONTEXT: Obj = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def compliant() -> Obj:
    return {
        "metadata": {"name": "p", "annotations": {}},
        "spec": {
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {"name": "c", "image": "i", "securityContext": copy.deepcopy(RESTRICTED_CONTAINER_CONTEXT)}
            ],
            "volumes": [
                {"name": "e", "emptyDir": {}},
                {"name": "s", "csi": {"driver": "socket.tieredkv.io"}},
            ],
        },
    }


def _c(p: Obj) -> Obj:
    container: Obj = p["spec"]["containers"][0]
    return container


BREAKERS: dict[str, Callable[[Obj], None]] = {
    "HostProcess": lambda p: p["spec"]["securityContext"].update(windowsOptions={"hostProcess": True}),
    "Host Namespaces": lambda p: p["spec"].update(hostIPC=True),
    "Privileged Containers": lambda p: _c(p)["securityContext"].update(privileged=True),
    "Capabilities": lambda p: _c(p)["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
    "HostPath Volumes": lambda p: p["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
    "Host Ports": lambda p: _c(p).update(ports=[{"containerPort": 80, "hostPort": 80}]),
    "AppArmor": lambda p: p["metadata"]["annotations"].update(
        {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}
    ),
    "SELinux": lambda p: _c(p)["securityContext"].update(seLinuxOptions={"type": "spc_t"}),
    "/proc Mount Type": lambda p: _c(p)["securityContext"].update(procMount="Unmasked"),
    "Seccomp": lambda p: _c(p)["securityContext"].update(seccompProfile={"type": "Unconfined"}),
    "Sysctls": lambda p: p["spec"]["securityContext"].update(
        sysctls=[{"name": "kernel.msgmax", "value": "1"}]
    ),
    "Volume Types": lambda p: p["spec"]["volumes"].append({"name": "n", "nfs": {"server": "s", "path": "/"}}),
    "Privilege Escalation": lambda p: _c(p)["securityContext"].pop("allowPrivilegeEscalation"),
    "Running as Non-root": lambda p: _c(p)["securityContext"].update(runAsNonRoot=False),
    "Running as Non-root user": lambda p: _c(p)["securityContext"].update(runAsUser=0),
    "Seccomp (restricted)": lambda p: (
        p["spec"]["securityContext"].pop("seccompProfile"),
        _c(p)["securityContext"].pop("seccompProfile"),
    ),
    "Capabilities (restricted)": lambda p: _c(p)["securityContext"]["capabilities"].update(add=["CHOWN"]),
}
"""One way to break each rule, starting from a pod that passes restricted."""

ALSO_RESTRICTED = {
    "HostPath Volumes": {"Volume Types"},
    "Seccomp": {"Seccomp (restricted)"},
    "Capabilities": {"Capabilities (restricted)"},
}
"""Breaking these baseline rules breaks a restricted rule too, as the documentation's table says."""


def test_the_table_has_a_breaking_pod_for_every_rule_of_both_profiles() -> None:
    assert set(BREAKERS) == set(BASELINE) | set(RESTRICTED)


def test_a_pod_that_follows_the_restricted_profile_breaks_no_rule() -> None:
    assert evaluate(compliant(), "restricted") == []


@pytest.mark.parametrize("rule", sorted(BREAKERS))
def test_each_rule_catches_a_pod_that_breaks_it_and_nothing_else(rule: str) -> None:
    p = compliant()
    BREAKERS[rule](p)
    expected = {rule} | ALSO_RESTRICTED.get(rule, set())
    assert rules_broken(p, "restricted") == expected
    assert rules_broken(p, "baseline") == ({rule} if rule in BASELINE else set())


def _pods(docs: list[Obj]) -> dict[str, Obj]:
    return {
        f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]
        for d in docs
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job")
    }


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_pod_the_chart_renders_is_restricted_except_the_csi_node_plugin(scenario: str) -> None:
    pods = _pods(render(scenario))
    assert pods, "the chart renders no pod"
    for name, template in pods.items():
        if name.endswith("-csi"):
            # Documented in docs/security.md: the node plugin bind-mounts into pods' volume directories.
            assert rules_broken(template, "baseline") == {"Privileged Containers", "HostPath Volumes"}
        else:
            assert evaluate(template, "restricted") == [], name


def csi_cache() -> CacheView:
    body = example("cache-agent.yaml")
    body["spec"].setdefault("agent", {})["socketVolume"] = "csi"
    view = cache_view(body)
    assert isinstance(view, CacheView)
    return view


def restricted_vllm_pod() -> Obj:
    p = pod()
    p["spec"]["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for c in p["spec"]["containers"]:
        c["securityContext"] = copy.deepcopy(RESTRICTED_CONTAINER_CONTEXT)
    return p


def test_an_injected_vllm_pod_of_a_csi_cache_passes_baseline_and_restricted() -> None:
    result = inject(restricted_vllm_pod(), [csi_cache()], plugin_image=PLUGIN_IMAGE)
    assert result.changed
    assert evaluate(result.pod, "baseline") == []
    assert evaluate(result.pod, "restricted") == []


def test_an_injected_plain_vllm_pod_of_a_csi_cache_breaks_only_what_its_own_containers_break() -> None:
    plain = pod()
    before = rules_broken(plain, "restricted")
    result = inject(plain, [csi_cache()], plugin_image=PLUGIN_IMAGE)
    assert evaluate(result.pod, "baseline") == []
    assert rules_broken(result.pod, "restricted") == before  # tieredkv's init container adds nothing
    assert not any("tieredkv" in v.where for v in evaluate(result.pod, "restricted"))


def test_a_host_path_cache_injects_what_baseline_forbids() -> None:
    result = inject(restricted_vllm_pod(), [agent_cache()], plugin_image=PLUGIN_IMAGE)
    assert rules_broken(result.pod, "baseline") == {"HostPath Volumes"}


def test_the_per_cache_agent_pods_need_host_paths_and_so_break_baseline() -> None:
    spec = TieredKVCacheSpec.model_validate(example("cache-agent.yaml")["spec"])
    template = agents.pod_template(
        CacheRef(name="c", namespace="ns", uid="u", generation=1),
        spec,
        image="i",
        max_bytes=1,
        config_hash="h",
    )
    assert "HostPath Volumes" in rules_broken(template, "baseline")
