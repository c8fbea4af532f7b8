"""`make demo`: bring up the local control plane (or use an opted-in cluster) and install tieredkv.

Today that means the CRDs from crds/; the operator, agents and the two-engine scenario join as their
issues land. Each step prints one line with its duration.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tieredkv_devcluster import controlplane, paths, testing


@contextmanager
def step(title: str) -> Iterator[None]:
    started = time.monotonic()
    print(f"==> {title} ...", flush=True)
    yield
    print(f"    done in {time.monotonic() - started:.1f}s", flush=True)


def run(state_dir: Path, log: Callable[[str], None] = print) -> int:
    if testing.use_existing():
        kubeconfig = Path(os.environ.get("KUBECONFIG", Path.home() / ".kube" / "config"))
        log(f"using the opted-in cluster from {kubeconfig}")
    else:
        with step(
            "local control plane (etcd, kube-apiserver, controller-manager, scheduler, 2 simulated nodes)"
        ):
            kubeconfig = controlplane.up(state_dir, log=lambda m: log(f"    {m}")).kubeconfig
    kubectl = [str(paths.tools_dir() / "kubectl"), f"--kubeconfig={kubeconfig}"]
    crds = sorted((paths.REPO_ROOT / "crds").glob("*.yaml"))
    with step(f"apply {len(crds)} CRD(s) from crds/"):
        for crd in crds:
            subprocess.run(
                [*kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(crd)], check=True
            )
        for crd in crds:
            subprocess.run(
                [*kubectl, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(crd)],
                check=True,
                capture_output=True,
            )
    subprocess.run([*kubectl, "get", "nodes,storageclass,crd"], check=False)
    log(
        f"\nkubeconfig: {kubeconfig}\n  export KUBECONFIG={kubeconfig}\n  make demo-down   # stops everything"
    )
    return 0
