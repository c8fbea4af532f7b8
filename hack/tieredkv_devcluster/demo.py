"""`make demo`: bring up the local control plane (or use an opted-in cluster) and run tieredkv in it.

Steps: the CRDs from crds/, the operator as a Deployment (the node simulator runs it as a real process),
and one TieredKVCache whose agents the operator starts on both simulated nodes; then it waits for Ready.
The two-engine scenario joins when the data path lands. Each step prints its duration.
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
    demo = paths.REPO_ROOT / "hack" / "demo"
    with step("operator (Deployment in tieredkv-system, run as a real process by the node simulator)"):
        subprocess.run([*kubectl, "apply", "-f", str(demo / "operator.yaml")], check=True)
        rollout = [
            "-n",
            "tieredkv-system",
            "rollout",
            "status",
            "deployment/tieredkv-operator",
            "--timeout=120s",
        ]
        subprocess.run([*kubectl, *rollout], check=True)
    with step("TieredKVCache demo/demo: claim, seed, vLLM config, agents on 2 nodes, until Ready"):
        subprocess.run([*kubectl, "apply", "-f", str(demo / "cache.yaml")], check=True)
        wait = ["-n", "demo", "wait", "--for=condition=Ready", "tkv/demo", "--timeout=180s"]
        subprocess.run([*kubectl, *wait], check=True)
    subprocess.run(
        [*kubectl, "-n", "demo", "get", "tkv,pvc,configmap,daemonset,pods", "-o", "wide"], check=False
    )
    log(
        f"\nkubeconfig: {kubeconfig}\n  export KUBECONFIG={kubeconfig}\n"
        "  kubectl -n demo describe tkv demo      # conditions and events\n"
        "  make demo-down                         # stops everything"
    )
    return 0
