"""The simulator's containers honour mountPropagation: Bidirectional as a container runtime does: a mount
made below such a volumeMount inside the container shows on the node, and other volumeMounts stay private.
This is what lets the CSI node plugin's bind mounts reach the vLLM pods the simulator starts afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tieredkv_agent.csi import mounts
from tieredkv_devcluster.sim import podexec

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root (CAP_SYS_ADMIN)"),
]

REPO = Path(__file__).resolve().parents[2]


def _run_container(root: Path, mounts_: list[dict[str, object]], script: str) -> None:
    plan = root / "plan.json"
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{REPO / 'agent'}:{REPO / 'hack'}"}
    plan.write_text(json.dumps({"argv": [sys.executable, "-c", script], "env": env, "mounts": mounts_}))
    done = subprocess.run(
        [sys.executable, "-m", "tieredkv_devcluster.sim.podexec", str(plan)],
        env={**os.environ, "PYTHONPATH": str(REPO / "hack")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_a_mount_below_a_bidirectional_volume_mount_reaches_the_node_and_a_private_one_does_not() -> None:
    root = Path(tempfile.mkdtemp(prefix="tkv-prop-"))
    pods, other, secret = root / "node" / "pods", root / "node" / "other", root / "socket-dir"
    for d in (pods / "p1", other / "p1", secret):
        d.mkdir(parents=True)
    (secret / "agent.sock").write_text("x")
    podexec.share_host_dir(pods)
    try:
        script = (
            "from tieredkv_agent.csi import mounts;"
            f"mounts.bind_read_only({str(secret)!r}, '{root}/c/pods/p1');"
            f"mounts.bind_read_only({str(secret)!r}, '{root}/c/other/p1')"
        )
        _run_container(
            root,
            [
                {"source": str(pods), "target": str(root / "c" / "pods"), "bidirectional": True},
                {"source": str(other), "target": str(root / "c" / "other")},
            ],
            script,
        )
        assert mounts.is_mount_point(str(pods / "p1"))
        assert (pods / "p1" / "agent.sock").read_text() == "x"
        assert not mounts.is_mount_point(str(other / "p1"))
    finally:
        podexec.unshare_host_dir(pods)
    assert not mounts.is_mount_point(str(pods))
