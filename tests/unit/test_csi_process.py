"""`tieredkv-agent csi` as a process: it serves both sockets from its TIEREDKV_CSI_* settings, answers the
kubelet, refuses a bad setting with exit status 2, and removes its sockets when it is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import pytest

from tieredkv_agent.csi.proto import csi_pb2, csi_pb2_grpc
from tieredkv_devcluster import testing

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _env(root: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(REPO / d) for d in ("agent", "common")),
        "TIEREDKV_CSI_NODE_NAME": "node-x",
        "TIEREDKV_CSI_CSI_SOCKET": str(root / "csi.sock"),
        "TIEREDKV_CSI_REGISTRATION_SOCKET": str(root / "reg" / "socket.tieredkv.io-reg.sock"),
        "TIEREDKV_CSI_SOCKET_ROOT": str(root / "run"),
        "TIEREDKV_CSI_PODS_DIR": str(root / "pods"),
        **extra,
    }


def test_the_csi_command_serves_until_sigterm_and_then_removes_its_sockets() -> None:
    root = Path(tempfile.mkdtemp(prefix="tkv-csip-"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tieredkv_agent.cli", "csi"], env=_env(root), stderr=subprocess.PIPE
    )
    try:
        testing.wait_for((root / "reg" / "socket.tieredkv.io-reg.sock").is_socket, 30, "the sockets")
        with grpc.insecure_channel(f"unix:{root / 'csi.sock'}") as channel:
            info = csi_pb2_grpc.NodeStub(channel).NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=10)
        assert info.node_id == "node-x"
        assert (root / "csi.sock").stat().st_mode & 0o777 == 0o600
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not (root / "csi.sock").exists()
    assert not (root / "reg" / "socket.tieredkv.io-reg.sock").exists()


def test_a_relative_socket_path_is_refused_with_exit_status_2() -> None:
    root = Path(tempfile.mkdtemp(prefix="tkv-csip-"))
    done = subprocess.run(
        [sys.executable, "-m", "tieredkv_agent.cli", "csi"],
        env=_env(root, TIEREDKV_CSI_PODS_DIR="pods"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "not an absolute path" in done.stderr
