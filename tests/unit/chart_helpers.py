"""Rendering charts/tieredkv with the real helm binary, for the test_chart_* modules."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tieredkv_devcluster import paths

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tieredkv"
SCENARIOS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "tkv", "tieredkv-system"
OPTIONAL_APIS = (
    "cert-manager.io/v1/Certificate",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
    "kopf.dev/v1/ClusterKopfPeering",
    "kopf.dev/v1/KopfPeering",
)
"""Rendered as if these CRDs were installed (what `helm install` sees once crds/ and cert-manager are in)."""

Manifest = dict[str, Any]


def helm() -> Path:
    binary = paths.tools_dir() / "helm"
    if not binary.exists():
        pytest.skip(f"helm is not in {binary.parent}: run `make tools`")
    return binary


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(helm()), *args], capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{out.stderr}")
    return out


@functools.cache
def render_text(scenario: str = "default-values.yaml", *sets: str, apis: bool = True) -> str:
    """`helm template` of the chart with one ci/ values file and extra --set flags."""
    args = ["template", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(CHART / "ci" / scenario)]
    for api in OPTIONAL_APIS if apis else ():
        args += ["--api-versions", api]
    for item in sets:
        args += ["--set", item]
    return run_helm(*args).stdout


def render(scenario: str = "default-values.yaml", *sets: str, apis: bool = True) -> list[Manifest]:
    return [d for d in yaml.safe_load_all(render_text(scenario, *sets, apis=apis)) if d]


def find(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def template_sources(text: str) -> dict[str, str]:
    """Rendered text split by the `# Source: tieredkv/templates/<file>` comments helm writes."""
    parts: dict[str, str] = {}
    for chunk in text.split("# Source: ")[1:]:
        name, _, body = chunk.partition("\n")
        parts[name] = parts.get(name, "") + body
    return parts
