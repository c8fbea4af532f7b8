"""spec.agent.socketVolume: csi gives injected vLLM pods the agent's socket directory as an inline ephemeral
volume of the chart's CSI driver instead of a hostPath; admission refuses what that driver cannot serve."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tests.unit.test_injection import PLUGIN_IMAGE, example, pod, vllm_container
from tieredkv_operator.admission.injection import inject
from tieredkv_operator.admission.injection_model import CacheView, cache_view
from tieredkv_operator.spec import TieredKVCacheSpec

pytestmark = pytest.mark.unit


def csi_cache(**agent: Any) -> CacheView:
    body = example("cache-agent.yaml")
    body["spec"].setdefault("agent", {}).update({"socketVolume": "csi", **agent})
    view = cache_view(body)
    assert isinstance(view, CacheView)
    return view


def test_a_csi_cache_injects_an_inline_csi_volume_naming_the_cache_and_no_host_path() -> None:
    result = inject(pod(), [csi_cache()], plugin_image=PLUGIN_IMAGE)
    volumes = {v["name"]: v for v in result.pod["spec"]["volumes"]}
    assert volumes["tieredkv-socket"] == {
        "name": "tieredkv-socket",
        "csi": {
            "driver": "socket.tieredkv.io",
            "readOnly": True,
            "volumeAttributes": {"cache": "chat-cache"},
        },
    }
    assert all("hostPath" not in v for v in result.pod["spec"]["volumes"])
    mounts = vllm_container(result.pod)["volumeMounts"]
    assert {"name": "tieredkv-socket", "mountPath": "/var/run/tieredkv/inference.chat-cache"} in mounts


def test_re_admitting_a_csi_injected_pod_changes_nothing() -> None:
    cache = csi_cache()
    once = inject(pod(), [cache], plugin_image=PLUGIN_IMAGE)
    again = inject(once.pod, [cache], plugin_image=PLUGIN_IMAGE)
    assert again.pod == once.pod


def test_a_csi_socket_volume_with_a_socket_dir_the_driver_does_not_serve_is_refused() -> None:
    spec = example("cache-agent.yaml")["spec"]
    spec.setdefault("agent", {}).update({"socketVolume": "csi", "socketDir": "/var/run/elsewhere"})
    with pytest.raises(ValidationError, match="socketVolume csi publishes sockets from /var/run/tieredkv"):
        TieredKVCacheSpec.model_validate(spec)
