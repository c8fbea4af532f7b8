"""Real Prometheus (Debian's binary, see hack/get-prometheus.sh) on loopback, scraping given targets.

Used by the k8s tests (a temporary directory, stopped by the test) and by `make demo` (in the cluster's
state directory, recorded so that `make demo-down` stops it with the rest). Rule files are loaded as
given, evaluated every second.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tieredkv_devcluster import paths, procs, testing
from tieredkv_devcluster.controlplane import free_port

RECORD_DIR = "extras"
"""Subdirectory of a cluster state directory holding records of extra processes (stopped by `down`)."""


class Prometheus:
    """`scrape_configs` are Prometheus's own (job_name, static_configs, honor_labels, ...)."""

    def __init__(
        self,
        scrape_configs: list[dict[str, Any]],
        *,
        directory: Path | None = None,
        port: int | None = None,
        rule_files: Sequence[Path] = (),
        record_in: Path | None = None,
    ) -> None:
        """Start it and wait until ready; with `record_in`, its process record goes there as JSON."""
        binary = paths.tool_binary("prometheus")
        if binary is None:
            raise FileNotFoundError("no prometheus binary: `make prometheus` unpacks Debian's into the cache")
        self._owns_dir = directory is None
        self.dir = directory or Path(tempfile.mkdtemp(prefix="tieredkv-prometheus-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": scrape_configs,
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = self.dir / "prometheus.log"
        argv = [
            str(binary),
            f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.proc, record = procs.spawn("prometheus", argv, self.log)
        if record_in is not None:
            record_in.mkdir(parents=True, exist_ok=True)
            (record_in / "prometheus.json").write_text(json.dumps(record.to_json()))
        testing.wait_for(lambda: self._get("/-/ready"), 30, "Prometheus to be ready", interval=0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body.startswith(b"{") else body

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; raises on a PromQL error, returns the result vector."""
        reply = self._get("/api/v1/query", query=expr)
        assert reply["status"] == "success", reply
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    def value(self, expr: str) -> float:
        """The single value of a query that sums to one series (0.0 when it returns none)."""
        rows = self.query(expr)
        return float(rows[0]["value"][1]) if rows else 0.0

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing)."""
        reply = self._get("/api/v1/alerts")
        alerts: list[dict[str, Any]] = reply["data"]["alerts"]
        return alerts

    def wait_for_scrapes(self, targets: int, scrapes: int = 3, timeout: float = 60) -> None:
        """Until every one of `targets` is up and has been scraped `scrapes` times."""

        def enough() -> bool:
            rows = self.query("count_over_time(up[1m])")
            up = self.query("up == 1")
            return (
                len(up) == targets
                and len(rows) == targets
                and all(float(r["value"][1]) >= scrapes for r in rows)
            )

        testing.wait_for(enough, timeout, f"{targets} targets scraped {scrapes} times", interval=0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
