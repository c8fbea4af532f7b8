"""A real Prometheus server (Debian's `prometheus` package) on loopback, scraping fixed targets."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.k8s.helm_release import free_port
from tieredkv_devcluster import testing


class Prometheus:
    """`scrape_configs` are Prometheus's own (job_name, static_configs, honor_labels, ...)."""

    def __init__(self, scrape_configs: list[dict[str, Any]]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError(
                "prometheus is not installed (Debian package prometheus: `make promtool`)"
            )
        self.dir = Path(tempfile.mkdtemp(prefix="tieredkv-prometheus-"))
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": scrape_configs,
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = self.dir / "prometheus.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        testing.wait_for(lambda: self._get("/-/ready"), 30, "Prometheus to be ready", interval=0.2)

    def _get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
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
        shutil.rmtree(self.dir, ignore_errors=True)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
