"""Serving the membership summary: the `tkv-summary` walk thread and a small HTTP server (see `summary`).

Threads: `SummaryService.__init__` binds the server (start-up thread; an OSError says the port is taken),
`start` launches the walk thread and the server's thread; `stop` (main thread) ends both.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from tieredkv_agent.events.summary import MembershipSummary

log = logging.getLogger(__name__)

INDEX_PATH = "/kv/summary"


class _Handler(BaseHTTPRequestHandler):
    """GET /kv/summary (JSON) and /kv/summary/<namespace> (the filter's bytes)."""

    summary: MembershipSummary

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == INDEX_PATH:
            self._send(200, "application/json", json.dumps(self.summary.index()).encode())
            return
        if path.startswith(INDEX_PATH + "/"):
            found = self.summary.bits(unquote(path[len(INDEX_PATH) + 1 :]))
            if found is not None:
                version, bits, data = found
                headers = {"X-Tieredkv-Version": str(version), "X-Tieredkv-Bits": str(bits)}
                self._send(200, "application/octet-stream", data, headers)
                return
        self._send(404, "text/plain", b"not found: GET /kv/summary lists the namespaces\n")

    def _send(self, code: int, kind: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Requests are not logged (routers poll)."""


class SummaryService:
    """Rebuilds `summary` every `interval_s` and serves it on `host:port`."""

    def __init__(self, summary: MembershipSummary, host: str, port: int, interval_s: float) -> None:
        self.summary = summary
        self.interval_s = interval_s
        handler = type("SummaryHandler", (_Handler,), {"summary": summary})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start walking and serving (start-up thread)."""
        self._threads = [
            threading.Thread(target=self._walk, name="tkv-summary", daemon=True),
            threading.Thread(target=self._server.serve_forever, name="tkv-summary-http", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        """Walk now instead of at the end of the interval (any thread)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop both threads (main thread)."""
        self._stop.set()
        self._wake.set()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(5.0)

    def _walk(self) -> None:
        """Rebuild at once, then every interval or when woken (the tkv-summary thread)."""
        while not self._stop.is_set():
            self._wake.clear()  # a wake-up during this walk is kept for the next
            try:
                self.summary.rebuild()
            except Exception:
                log.exception("rebuilding the membership summary failed (the next walk retries)")
            self._wake.wait(self.interval_s)
