"""The simulated nodes' kubelet API: just enough of it for `kubectl logs` to work.

kube-apiserver serves `pods/log` by calling the pod's node at `https://<InternalIP>:<kubeletEndpoint.Port>`
`/containerLogs/<namespace>/<pod>/<container>` with the query the user gave (follow, tailLines, limitBytes,
...). Every simulated node registers this one server's port (all nodes share 127.0.0.1), and it answers
from the container log files the pod runners write. Without `--kubelet-certificate-authority` the API
server does not verify this certificate; the server listens on loopback only.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger("sim.kubelet")

LogFinder = Callable[[str, str, str], Path | None]
"""(namespace, pod, container) -> that container's log file while the pod runs on a simulated node."""

FOLLOW_POLL_S = 0.2


def tail_bytes(data: bytes, lines: int | None, limit: int | None) -> bytes:
    """What the kubelet returns of a log: the last `lines` lines, then at most `limit` bytes (pure)."""
    if lines is not None:
        kept = data.splitlines(keepends=True)
        data = b"".join(kept[-lines:]) if lines > 0 else b""
    if limit is not None:
        data = data[:limit]
    return data


class KubeletServer:
    """One HTTPS server for every simulated node; its threads are daemons, one per request."""

    def __init__(self, find_log: LogFinder, cert: Path, key: Path) -> None:
        handler = type("Handler", (_Handler,), {"find_log": staticmethod(find_log)})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="kubelet-api", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("kubelet log endpoint on 127.0.0.1:%d (kubectl logs)", self.port)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    find_log: LogFinder
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        log.debug(format, *args)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._fail(404, f"the simulated kubelet serves only /containerLogs/, not {url.path}")
            return
        query = urllib.parse.parse_qs(url.query)
        if _flag(query, "previous"):
            self._fail(400, "the simulated kubelet keeps one log per container, across restarts: drop -p")
            return
        path = self.find_log(parts[1], parts[2], parts[3])
        if path is None or not path.exists():
            self._fail(404, f"container {parts[3]} of pod {parts[1]}/{parts[2]} is not running here")
            return
        data = tail_bytes(path.read_bytes(), _int(query, "tailLines"), _int(query, "limitBytes"))
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if not _flag(query, "follow"):
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._follow(parts[1:], path, data, offset=path.stat().st_size)

    def _follow(self, names: list[str], path: Path, first: bytes, offset: int) -> None:
        """Stream what the container writes until its pod stops here or the reader goes away."""
        try:
            self._chunk(first)
            while self.find_log(*names) is not None:
                time.sleep(FOLLOW_POLL_S)
                with path.open("rb") as fh:
                    fh.seek(offset)
                    more = fh.read()
                offset += len(more)
                self._chunk(more)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            return

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def _fail(self, code: int, message: str) -> None:
        body = (message + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[0].lower() in ("true", "1")


def _int(query: dict[str, list[str]], name: str) -> int | None:
    value = query.get(name, [None])[0]
    return int(value) if value is not None and value.lstrip("-").isdigit() else None
