"""The node simulator's kubelet log endpoint, over HTTPS as kube-apiserver calls it (`kubectl logs`)."""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tieredkv_devcluster.pki import ensure_pki, issue_serving_cert
from tieredkv_devcluster.sim.kubelet import KubeletServer, tail_bytes

pytestmark = pytest.mark.unit

Served = tuple[KubeletServer, Path, set[str]]


def test_tail_keeps_the_last_lines_then_limits_the_bytes() -> None:
    data = b"one\ntwo\nthree\n"
    assert tail_bytes(data, None, None) == data
    assert tail_bytes(data, 2, None) == b"two\nthree\n"
    assert tail_bytes(data, 0, None) == b""
    assert tail_bytes(data, 2, 5) == b"two\nt"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    ensure_pki(tmp_path / "pki")
    log = tmp_path / "engine.log"
    log.write_bytes(b"started\nserving\n")
    running = {"ns/engine-0/engine"}

    def find(ns: str, pod: str, container: str) -> Path | None:
        return log if f"{ns}/{pod}/{container}" in running else None

    server = KubeletServer(find, *issue_serving_cert(tmp_path / "pki", "kubelet", ["127.0.0.1"]))
    server.start()
    yield server, log, running
    server.stop()


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", port, context=ssl._create_unverified_context(), timeout=10
    )
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_a_running_containers_log_is_served_with_tail_lines(
    served: Served,
) -> None:
    server, _, _ = served
    assert get(server.port, "/containerLogs/ns/engine-0/engine") == (200, b"started\nserving\n")
    assert get(server.port, "/containerLogs/ns/engine-0/engine?tailLines=1") == (200, b"serving\n")


def test_an_unknown_container_or_path_is_a_clear_404(served: Served) -> None:
    server, _, _ = served
    status, body = get(server.port, "/containerLogs/ns/engine-0/sidecar")
    assert status == 404 and b"is not running here" in body
    assert get(server.port, "/exec/ns/engine-0/engine")[0] == 404


def test_follow_streams_new_lines_until_the_pod_stops(served: Served) -> None:
    server, log, running = served

    def write_then_stop() -> None:
        time.sleep(0.5)
        with log.open("ab") as fh:
            fh.write(b"request 1\n")
        time.sleep(0.5)
        running.clear()

    threading.Thread(target=write_then_stop, daemon=True).start()
    status, body = get(server.port, "/containerLogs/ns/engine-0/engine?follow=true")
    assert (status, body) == (200, b"started\nserving\nrequest 1\n")
