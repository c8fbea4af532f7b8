"""The two-engine scenario of `make demo` and its k8s test: engine A stores, engine B loads A's blocks.

Everything goes through the API server: the quickstart manifests are applied, engine B is scaled up once
A reported, and the numbers come from the engines' own summaries (their logs) and the agents' metrics.
Functions take a `TestCluster` (kubeconfig + the local state layout, or None for an opted-in cluster).
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tieredkv_devcluster import paths, testing
from tieredkv_devcluster.gluster import GlusterInfo
from tieredkv_devcluster.sim import GLUSTER_STORAGE_CLASS
from tieredkv_devcluster.sim.volumes import gluster_path

QUICKSTART = paths.REPO_ROOT / "docs" / "examples" / "quickstart.yaml"
ENGINE_CONTAINER = "vllm"


SIM_ANNOTATIONS = {"sim.tieredkv.io/run": "local"}
"""What makes the node simulator run a pod's command as a local process (docs/dev-cluster.md)."""


def manifests(
    namespace: str = "quickstart",
    prompts: dict[str, list[str]] | None = None,
    *,
    simulated: bool = True,
    storage_class: str | None = None,
) -> list[dict[str, Any]]:
    """The quickstart objects, moved to `namespace`; `prompts` replaces an engine's `--prompt` list.

    `simulated` marks the engine pods for the node simulator of the local control plane; `storage_class`
    sets the cache's `storage.storageClassName`.
    """
    docs = [doc for doc in yaml.safe_load_all(QUICKSTART.read_text()) if doc]
    for doc in docs:
        if doc["kind"] == "Namespace":
            doc["metadata"]["name"] = namespace
        else:
            doc["metadata"]["namespace"] = namespace
        name = doc["metadata"]["name"]
        if doc["kind"] == "TieredKVCache" and storage_class:
            doc["spec"]["storage"]["storageClassName"] = storage_class
        if doc["kind"] == "Deployment" and simulated:
            doc["spec"]["template"]["metadata"].setdefault("annotations", {}).update(SIM_ANNOTATIONS)
        if doc["kind"] == "Deployment" and prompts and name in prompts:
            container = doc["spec"]["template"]["spec"]["containers"][0]
            container["args"] = _with_prompts(container["args"], prompts[name])
    return docs


def _with_prompts(args: list[str], prompts: list[str]) -> list[str]:
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--prompt":
            skip = True
        else:
            kept.append(arg)
    for text in prompts:
        kept += ["--prompt", text]
    return kept


def rogue_engine(namespace: str, seed: str = "987654321", *, simulated: bool = True) -> dict[str, Any]:
    """Engine A's Deployment as `engine-rogue`, deriving NONE_HASH from another seed."""
    engine = next(
        d
        for d in manifests(namespace, simulated=simulated)
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "engine-a"
    )
    engine["metadata"]["name"] = "engine-rogue"
    template = engine["spec"]["template"]
    engine["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "engine-rogue"
    template["metadata"]["labels"]["app.kubernetes.io/name"] = "engine-rogue"
    container = template["spec"]["containers"][0]
    container["args"] = [
        *_with_prompts(container["args"], ["9:256"]),
        "--hash-seed",
        seed,
        "--wait-agent-s",
        "3",
    ]
    return dict(engine)


def apply(kube: testing.TestCluster, docs: list[dict[str, Any]]) -> None:
    kube.kubectl("apply", "-f", "-", stdin="\n---\n".join(yaml.safe_dump(d) for d in docs))


def pods(kube: testing.TestCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = json.loads(kube.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json"))
    return [p for p in out["items"] if not p["metadata"].get("deletionTimestamp")]


def engine_log(kube: testing.TestCluster, namespace: str, engine: str) -> str:
    """The engine container's output: the simulator's log file, or `kubectl logs` on a real cluster."""
    found = pods(kube, namespace, f"app.kubernetes.io/name={engine}")
    if not found:
        return ""
    pod = found[0]
    if kube.layout is not None:
        path = kube.layout.pods / pod["metadata"]["uid"] / "logs" / f"{ENGINE_CONTAINER}.log"
        return path.read_text(errors="replace") if path.exists() else ""
    return kube.kubectl("logs", "-n", namespace, pod["metadata"]["name"], "-c", ENGINE_CONTAINER, check=False)


def summary(log: str) -> dict[str, Any] | None:
    """The engine's summary line (the last JSON line with "summary"), if it printed one."""
    for line in reversed(log.splitlines()):
        text = line[line.find("{") :] if "{" in line else ""
        if '"summary": true' in text:
            parsed: dict[str, Any] = json.loads(text)
            return parsed
    return None


def wait_summary(
    kube: testing.TestCluster, namespace: str, engine: str, timeout: float = 180
) -> dict[str, Any]:
    found: dict[str, Any] = testing.wait_for(
        lambda: summary(engine_log(kube, namespace, engine)), timeout, f"{engine}'s summary", interval=0.5
    )
    return found


def scale(kube: testing.TestCluster, namespace: str, deployment: str, replicas: int) -> None:
    kube.kubectl("scale", "-n", namespace, f"deployment/{deployment}", f"--replicas={replicas}")


def agent_targets(kube: testing.TestCluster, namespace: str, cache: str) -> list[str]:
    """host:port of each agent pod's metrics endpoint."""
    found = pods(kube, namespace, f"tieredkv.io/cache={cache},app.kubernetes.io/component=agent")
    return [f"{p['status']['podIP']}:9400" for p in found if p.get("status", {}).get("podIP")]


def scrape(targets: list[str], combine: str = "sum") -> dict[str, float]:
    """Each sample (name{labels}) over the targets' /metrics pages: their sum, or with "max" their maximum
    (for a gauge only one agent sets, such as the GC leader's volume usage)."""
    totals: dict[str, float] = {}
    for target in targets:
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                key = f"{sample.name}{{{labels}}}"
                value = float(sample.value)
                seen = totals.get(key)
                totals[key] = (
                    value if seen is None else (seen + value if combine == "sum" else max(seen, value))
                )
    return totals


@dataclass
class VolumeFiles:
    """Where the cache's PersistentVolume lives on this machine, and block files found in it."""

    root: Path
    blocks: list[Path]


def volume_files(kube: testing.TestCluster, namespace: str, claim: str) -> VolumeFiles | None:
    """The PV's local directory (local control plane only) and its block files."""
    pvc = json.loads(kube.kubectl("get", "pvc", "-n", namespace, claim, "-o", "json"))
    volume = pvc["spec"].get("volumeName")
    if not volume or kube.layout is None:
        return None
    pv = json.loads(kube.kubectl("get", "pv", volume, "-o", "json"))
    root = pv_directory(kube, pv)
    return VolumeFiles(root, sorted(_blocks(root))) if root is not None and root.is_dir() else None


def pv_directory(kube: testing.TestCluster, pv: dict[str, Any], node: str = "tkv-node-1") -> Path | None:
    """A PV's directory on this machine: a hostPath's own, or a glusterfs PV's through `node`'s client.

    `pv` is the object as JSON or as the client's `to_dict()` (snake_case keys)."""
    spec = pv["spec"]
    if (gluster_source := spec.get("glusterfs")) and kube.layout is not None:
        return gluster_path(kube.layout.nodes / node, gluster_source["path"])
    source = spec.get("hostPath") or spec.get("host_path") or spec.get("local") or {}
    return Path(source["path"]) if source.get("path") else None


def storage_class(kube: testing.TestCluster) -> str | None:
    """`tieredkv-gluster` when the local cluster runs GlusterFS, else None (the cluster's default class)."""
    if kube.layout is None or not kube.layout.state_file.exists():
        return None
    recorded = json.loads(kube.layout.state_file.read_text())
    return GLUSTER_STORAGE_CLASS if recorded.get("gluster") else None


def gluster_clients(kube: testing.TestCluster) -> dict[str, str]:
    """Per simulated node, the GlusterFS client its pods use: "pid P, FUSE device M:N, at <mount>"."""
    if kube.layout is None or not kube.layout.state_file.exists():
        return {}
    recorded = json.loads(kube.layout.state_file.read_text()).get("gluster")
    if not recorded:
        return {}
    info = GlusterInfo.from_json(recorded)
    out = {}
    for rec_file in sorted(info.clients_dir.glob("*.json")):
        client = json.loads(rec_file.read_text())
        device = Path(client["mount"]).stat().st_dev
        out[rec_file.stem] = (
            f"glusterfs pid {client['pid']}, FUSE device {os.major(device)}:{os.minor(device)}, "
            f"at {client['mount']}"
        )
    return out


def _blocks(root: Path) -> Iterator[Path]:
    for directory in root.glob("*_r0"):
        yield from directory.rglob("*.bin")


def seed(kube: testing.TestCluster, namespace: str, cache: str) -> str:
    secret = json.loads(
        kube.kubectl("get", "secret", "-n", namespace, f"tieredkv-{cache}-seed", "-o", "json")
    )
    return base64.b64decode(secret["data"]["seed"]).decode()


def expected_blocks(
    hash_seed: str, prompt_seed: int, tokens: int, block_bytes: int
) -> list[tuple[str, bytes]]:
    """(relative path under <namespace>_r0, bytes) of the blocks an engine stores for one prompt."""
    from tieredkv_agent.standin.engine import block_content, engine_spec, prompt, request_keys
    from tieredkv_agent.store.naming import block_relpath

    spec = engine_spec(environ={**os.environ, "PYTHONHASHSEED": hash_seed})
    keys = request_keys(spec, prompt(prompt_seed, tokens))
    base = f"{spec.tieredkv_engine.namespace}_r0"
    return [(f"{base}/{block_relpath(key)}", block_content(key, block_bytes)) for key in keys]
