"""A small HTTPS server for the admission webhooks, on threads of its own (stdlib only).

Why not kopf's aiohttp server: there every admission request waits for kopf's event loop, which is busy
with watch events and reconciles at exactly the moments pods are created in bulk, and kopf's admission
path (cause building, handler dispatch, two log records per request) costs more than the decision
itself. Here a thread per API-server connection reads the request, calls `dispatch` and writes the
answer: no event loop, no logging on the request path, TCP_NODELAY and one write per response, and the
API server's keep-alive connections keep their TLS sessions.

Threads: `start()` (kopf's event loop, once) starts the accept thread ("webhook-accept"); it hands each
new connection to a thread of its own ("webhook-conn"), which does the TLS handshake and serves the
connection's requests one after another until the client closes it or it idles for IDLE_TIMEOUT_S.
`dispatch` is called on those connection threads, concurrently. `set_context` (any thread) swaps the TLS
context for new connections (renewed certificate files); `close()` stops accepting.
"""

import contextlib
import http.server
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("tieredkv_operator.webhook_server")

Dispatch = Callable[[str, dict[str, Any]], dict[str, Any]]
"""(webhook id = the URL path without its slash, the decoded AdmissionReview) -> the AdmissionReview to
send back. Raising `LookupError` answers 404, `ValueError` 400, anything else 500 (the API server then
applies the webhook's failurePolicy)."""

MAX_BODY_BYTES = 8 << 20
"""Largest request accepted: an AdmissionReview carries the object (etcd's limit is 1.5 MiB) twice."""
HANDSHAKE_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 90.0
"""An idle keep-alive connection is closed after this (the API server's own idle timeout is 90 s)."""


class AdmissionServer:
    """Serves POST /<webhook id> with `dispatch` over TLS (or plain HTTP when `context` is None)."""

    def __init__(self, addr: str, port: int, dispatch: Dispatch, context: ssl.SSLContext | None) -> None:
        self.dispatch = dispatch
        self._context = context
        self._httpd = _HTTPServer((addr or "0.0.0.0", port), _Handler, self)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the one the system picked for 0)."""
        port: int = self._httpd.server_address[1]
        return port

    @property
    def context(self) -> ssl.SSLContext | None:
        return self._context

    def set_context(self, context: ssl.SSLContext | None) -> None:
        """Use `context` for connections accepted from now on (any thread)."""
        self._context = context

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="webhook-accept",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop accepting and close the listening socket; open connections end on their own (daemons)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type["_Handler"], owner: AdmissionServer) -> None:
        self.owner = owner
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="webhook-conn",
            daemon=True,
        )
        thread.start()

    def finish_request(self, request: Any, client_address: Any) -> None:
        """The connection's thread: TLS handshake, then its requests until it closes."""
        sock: socket.socket = request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        context = self.owner.context
        if context is not None:
            sock.settimeout(HANDSHAKE_TIMEOUT_S)
            try:
                sock = context.wrap_socket(sock, server_side=True)
            except (OSError, ValueError) as err:
                log.debug("TLS handshake with %s failed: %s", client_address, err)
                return
        try:
            _Handler(sock, client_address, self)
        finally:
            with contextlib.suppress(OSError):
                sock.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S
    server: _HTTPServer

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or "-1")
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self._reply(411 if length < 0 else 413, {"message": "need a Content-Length up to 8 MiB"})
            return
        body = self.rfile.read(length)
        try:
            review = json.loads(body)
            if not isinstance(review, dict):
                raise ValueError("the body is not a JSON object")
            answer = self.server.owner.dispatch(urlsplit(self.path).path.strip("/"), review)
        except LookupError as err:
            self._reply(404, {"message": str(err)})
        except ValueError as err:
            self._reply(400, {"message": str(err)})
        except Exception:
            log.exception("admission request to %s failed", self.path)
            self._reply(500, {"message": "internal error"})
        else:
            self._reply(200, answer)

    def _reply(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()
        head = (
            f"HTTP/1.1 {code} {self.responses.get(code, ('',))[0]}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode("latin-1")
        self.wfile.write(head + data)  # one write: one TLS record, no Nagle wait between head and body
        self.close_connection = code in (411, 413)  # the body was not read: the stream is off

    def log_message(self, format: str, *args: Any) -> None:
        """No access log on the request path."""
