"""The agent's committed gRPC modules are exactly what protoc makes of the vendored .proto files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tieredkv_devcluster import protos

pytestmark = pytest.mark.unit

AGENT_ROOT = Path(__file__).resolve().parents[2] / "agent"


def test_regenerating_the_csi_and_registration_modules_gives_the_committed_bytes(tmp_path: Path) -> None:
    written = protos.generate(AGENT_ROOT, tmp_path)
    assert len(written) == 3 * len(protos.PROTOS)
    for fresh in written:
        committed = AGENT_ROOT / fresh.relative_to(tmp_path)
        assert committed.read_bytes() == fresh.read_bytes(), f"{committed} is stale: run make protos"


def test_the_generated_services_carry_the_csi_and_kubelet_wire_names() -> None:
    from tieredkv_agent.csi.proto import csi_pb2, pluginregistration_pb2

    services = csi_pb2.DESCRIPTOR.services_by_name
    assert services["Identity"].full_name == "csi.v1.Identity"
    assert "NodePublishVolume" in services["Node"].methods_by_name
    registration = pluginregistration_pb2.DESCRIPTOR.services_by_name["Registration"]
    assert registration.full_name == "pluginregistration.Registration"
