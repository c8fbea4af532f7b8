"""Property: whatever the validating webhook admits, the real API server accepts every child of, and the
agent's settings load from the environment the operator renders for it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kubernetes import client

from tieredkv_agent.config import AgentSettings
from tieredkv_operator.admission.child_checks import built_children
from tieredkv_operator.admission.validation import parse_spec, validate
from tieredkv_operator.kube import Kube, KubeError

pytestmark = pytest.mark.k8s

T = Any


def mostly(valid: st.SearchStrategy[T], invalid: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """Nine times in ten a value the API server accepts, else one it may refuse."""
    return st.integers(0, 9).flatmap(lambda n: valid if n else invalid)


NAMES = mostly(
    st.from_regex(r"[a-z]([-a-z0-9]{0,30}[a-z0-9])?", fullmatch=True),
    st.sampled_from(["a.b.c", "n" * 47, "Upper", "x"]),
)
LABEL_KEYS = mostly(
    st.from_regex(r"([a-z0-9]{1,6}(\.[a-z0-9]{1,5})?/)?[a-z0-9]([a-z0-9._-]{0,10}[a-z0-9])?", fullmatch=True),
    st.sampled_from(["bad key!", "a/b/c", "-x", "k" * 64, "/x", "Example.com/x"]),
)
LABEL_VALUES = mostly(
    st.from_regex(r"([A-Za-z0-9]([A-Za-z0-9._-]{0,8}[A-Za-z0-9])?)?", fullmatch=True),
    st.sampled_from(["v" * 64, "-bad", "a b"]),
)
QUANTITIES = mostly(
    st.sampled_from(["1", "1Gi", "1.5Gi", "2e3", "1Ki", "3", "10G", 4096]),
    st.sampled_from(["0", "500m", "lots", "-1", "0.1", ""]),
)
CPU = mostly(st.sampled_from(["100m", "1", "2", "0.5"]), st.sampled_from(["lots", "-1", "1x"]))
TOLERATIONS = mostly(
    st.sampled_from(
        [
            {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "zone", "operator": "Equal", "value": "a", "effect": "PreferNoSchedule"},
            {"operator": "Exists"},
            {"key": "t", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
        ]
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "key": LABEL_KEYS,
            "operator": st.sampled_from(["Exists", "Equal", "Bogus"]),
            "value": LABEL_VALUES,
            "effect": st.sampled_from(["NoSchedule", "NoExecute", "Bogus", ""]),
            "tolerationSeconds": st.integers(-5, 100),
            "kee": st.just("typo"),
        },
    ),
)
AMOUNTS = st.fixed_dictionaries({}, optional={"cpu": CPU, "memory": QUANTITIES})
RESOURCES = mostly(
    st.one_of(
        st.fixed_dictionaries({}, optional={"limits": AMOUNTS}),
        st.fixed_dictionaries({}, optional={"requests": AMOUNTS}),
    ),
    st.fixed_dictionaries({}, optional={"limits": AMOUNTS, "requests": AMOUNTS, "claims": st.just([])}),
)
SOCKET_DIRS = mostly(
    st.sampled_from(["/var/run/tieredkv", "/run/x", "/var/lib/kv-sockets", "/tmp/s"]),
    st.sampled_from(
        ["/proc", "/var/run/a\x00b", "/", "relative", "/var/run/" + "d" * 90, "/a/../b", "/sys/x"]
    ),
)
SUB_PATHS = mostly(
    st.sampled_from([None, "a", "a/b", "ok-dir", "x" * 200]),
    st.sampled_from(["a" * 300, "../x", "a//b", "a\nb", "/abs", "a" * 1024]),
)
EVENT_KINDS = mostly(
    st.lists(
        st.sampled_from(["BlockStored", "BlockRemoved", "AllBlocksCleared"]),
        min_size=1,
        max_size=3,
        unique=True,
    ),
    st.sampled_from([[], ["BlockEvicted"], ["BlockStored", "BlockStored"]]),
)
MODEL_NAMES = mostly(
    st.sampled_from(["org/model", "meta-llama/Llama-3.1-8B-Instruct", "m,odel [x]", "modèle", "x" * 256]),
    st.sampled_from(["", "a\nb", "x" * 257, "tab\tname"]),
)
EVENTS_FILTERS = st.fixed_dictionaries(
    {},
    optional={
        "kinds": EVENT_KINDS,
        "models": st.lists(MODEL_NAMES, max_size=3),
        "groups": st.lists(mostly(st.integers(0, 3), st.integers(-2, -1)), max_size=3),
    },
)
LOW = mostly(st.sampled_from([0.0001, 0.5, 0.8]), st.sampled_from([0, 1, 1.5, -0.1, 0.95]))
HIGH = mostly(st.sampled_from([0.85, 0.9, 1]), st.sampled_from([0, 1.5, 0.5]))


@st.composite
def specs(draw: Callable[[Any], Any]) -> tuple[str, dict[str, Any]]:
    mode = draw(st.sampled_from(["native", "agent"]))
    storage: dict[str, Any] = {"size": draw(mostly(st.sampled_from(["1Gi", "100Gi", "2Ti"]), QUANTITIES))}
    if (sub_path := draw(SUB_PATHS)) is not None:
        storage["subPath"] = sub_path
    agent: dict[str, Any] = {
        "nodeSelector": draw(st.dictionaries(LABEL_KEYS, LABEL_VALUES, max_size=2)),
        "tolerations": draw(st.lists(TOLERATIONS, max_size=2)),
        "resources": draw(RESOURCES),
        "socketDir": draw(SOCKET_DIRS),
        "readThreads": draw(mostly(st.integers(1, 1024), st.integers(-1, 2000))),
        "ramTierBytes": draw(st.sampled_from([0, "1Gi"])) if mode == "agent" else 0,
    }
    capacity: dict[str, Any] = {"highWatermark": draw(HIGH), "lowWatermark": draw(LOW)}
    if draw(st.booleans()):
        capacity["maxBytes"] = draw(mostly(st.sampled_from(["1", "1Ki", "100Mi", 1000]), QUANTITIES))
    vllm = {
        "version": "0.33",
        "mode": mode,
        "cpuBytes": "1Gi",
        "selector": {"matchLabels": draw(st.dictionaries(LABEL_KEYS, LABEL_VALUES, min_size=1, max_size=2))},
    }
    spec = {"storage": storage, "vllm": vllm, "agent": agent, "capacity": capacity}
    if draw(st.booleans()):
        spec["events"] = {"enabled": draw(st.booleans()), "filter": draw(EVENTS_FILTERS)}
    return draw(NAMES), spec


def _agent_settings(daemon_set: dict[str, Any]) -> AgentSettings:
    env = daemon_set["spec"]["template"]["spec"]["containers"][0]["env"]
    plain = {e["name"].removeprefix("TIEREDKV_").lower(): e["value"] for e in env if "value" in e}
    return AgentSettings(**plain)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=specs())
def test_what_admission_accepts_the_api_server_and_the_agent_accept_too(
    api: client.ApiClient, ns: str, case: tuple[str, dict[str, Any]]
) -> None:
    name, spec = case
    body = {"apiVersion": "tieredkv.io/v1alpha1", "kind": "TieredKVCache", "spec": spec}
    body["metadata"] = {"name": name, "namespace": ns}
    if validate(body, None):
        event("refused at admission")
        return
    event("admitted")
    parsed, errors = parse_spec(spec)
    assert parsed is not None, errors
    kube = Kube(api)  # the operator's own client: plain JSON, no client-side models in the way
    for child in built_children(name, ns, parsed):
        try:
            kube.create(child, dry_run=True)
        except KubeError as exc:
            pytest.fail(f"admitted {spec}, but the API server refuses {child['kind']}: {exc}")
        if child["kind"] == "DaemonSet":
            _agent_settings(child)
