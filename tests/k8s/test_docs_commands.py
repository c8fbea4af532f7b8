"""The shell commands the docs give for a real cluster run as written against the local control plane.

A fenced `sh` block right after the marker `<!-- tested: tests/k8s/test_docs_commands.py runs this block -->`
is run line by line with bash, from the repository root, with this cluster's kubeconfig. Two things differ
from a real cluster, and only these: `$REGISTRY` names no registry (the simulated nodes run the operator
from this checkout, not from an image), and `helm install` also gets the simulator's values (the operator
runs as a local process, the API server calls the webhooks on loopback) and `--take-ownership` (the
session's other tests applied the CRD with kubectl already).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.helm_release import CHART
from tieredkv_devcluster import paths, testing
from tieredkv_devcluster.controlplane import free_port

pytestmark = pytest.mark.k8s

ROOT = paths.REPO_ROOT
MARKER = "<!-- tested: tests/k8s/test_docs_commands.py runs this block -->"
TESTED_DOCS = [ROOT / "docs" / "quickstart.md", ROOT / "docs" / "configuration.md"]
NAMESPACES = ("inference", "tieredkv-system")


def marked_commands(doc: Path) -> list[str]:
    """The commands of every marked block in `doc`, continuation lines joined, comments kept for bash."""
    blocks = re.findall(re.escape(MARKER) + r"\n```sh\n(.*?)```", doc.read_text(), flags=re.S)
    return [cmd for block in blocks for cmd in block.replace("\\\n", " ").splitlines() if cmd.strip()]


def test_the_docs_mark_their_real_cluster_commands_for_this_test() -> None:
    commands = {doc.name: marked_commands(doc) for doc in TESTED_DOCS}
    assert all(commands.values()), commands
    assert any(cmd.startswith("helm install ") for cmd in commands["quickstart.md"])


@pytest.fixture
def clean_namespaces(kube: testing.TestCluster) -> Iterator[dict[str, str]]:
    """The environment the commands run in; afterwards the release and the docs' namespaces are removed."""
    home = Path(tempfile.mkdtemp(prefix="tieredkv-docs-helm-"))
    env = {
        **os.environ,
        "KUBECONFIG": str(kube.kubeconfig),
        "REGISTRY": "registry.invalid/docs-test",
        "PATH": os.pathsep.join([str(paths.tools_dir()), os.environ.get("PATH", "")]),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    yield env
    kube.kubectl("delete", "namespace", "inference", "--ignore-not-found", "--wait=false", check=False)
    helm = [str(paths.tools_dir() / "helm"), "uninstall", "tieredkv", "-n", "tieredkv-system"]
    subprocess.run(helm, env=env, capture_output=True, check=False, timeout=120)
    kube.kubectl("delete", "namespace", "tieredkv-system", "--ignore-not-found", "--wait=false", check=False)


def local_adaptation(command: str, port: int) -> str:
    """`helm install` also gets the simulator's values; every other command runs as written."""
    if not command.startswith("helm install "):
        return command
    sim = CHART / "ci" / "sim-values.yaml"
    return (
        f"{command} -f {sim} --set webhook.url=https://127.0.0.1:{port} --set webhook.port={port} "
        "--take-ownership --wait --timeout=150s"
    )


def test_the_real_cluster_install_and_the_adoption_example_work_as_written(
    kube: testing.TestCluster, clean_namespaces: dict[str, str]
) -> None:
    if kube.layout is None:
        pytest.skip("runs the chart's operator through the local node simulator")
    port = free_port()
    for doc in TESTED_DOCS:
        for command in marked_commands(doc):
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", local_adaptation(command, port)],
                cwd=ROOT,
                env=clean_namespaces,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert done.returncode == 0, f"{doc.name}: `{command}` failed:\n{done.stdout}\n{done.stderr}"
    claim = kube.kubectl("get", "-n", "inference", "tkv/chat-cache-adopted", "-o=jsonpath={.status.pvcName}")
    assert claim == "shared-kv"
