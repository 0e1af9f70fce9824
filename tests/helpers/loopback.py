"""Loopback HTTP servers for the test harness (the token service, the CDN-less fronts).

Everything here is stdlib ``http.server``: a ThreadingHTTPServer per helper,
serving one ``App`` callable in daemon threads, HTTP/1.1 keep-alive, bodies
framed by Content-Length or chunked. Nothing here forwards to a registry:
every reverse proxy in the tests is ``tools.faultproxy.FaultProxy`` (with its
``local`` hook for a front's own routes).
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request a helper server received, kept for tests to assert on.

    ``headers`` has lower-cased names. ``auth_present`` is true when the
    client presented credentials of any kind (header or OAuth2 form);
    ``username`` is who they proved to be, None if anonymous or refused.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    auth_present: bool = False
    username: str | None = None
    scopes: tuple[str, ...] = ()
    service: str | None = None
    grant_type: str | None = None


App = Callable[["Handler"], None]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120  # idle keep-alive connections end eventually
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # headers and body go out as two writes: without this, Nagle holds the
        # body until the client's delayed ACK of the headers (~40 ms a reply)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        super().finish()

    def _dispatch(self) -> None:
        self.server.app(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        self.connections: set[socket.socket] = set()
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind adds a reverse DNS lookup we do not need.
        socketserver.TCPServer.server_bind(self)
        host, port = str(self.server_address[0]), int(self.server_address[1])
        self.server_name, self.server_port = host, port
        self.origin = f"http://{host}:{port}"

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class LoopbackServer:
    """A ThreadingHTTPServer on ``host``:free port, serving ``app`` in a thread."""

    def __init__(self, host: str, app: App) -> None:
        self._server = _HTTPServer((host, 0), app)
        self.url = self._server.origin
        self.host = self.url.removeprefix("http://")
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        # Wake handlers blocked on idle keep-alive connections so they close.
        for conn in list(self._server.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)


def first_param(values: Mapping[str, list[str]], key: str) -> str | None:
    found = values.get(key)
    return found[0] if found else None


def lower_headers(h: Handler) -> dict[str, str]:
    return {name.lower(): value for name, value in h.headers.items()}


def reply(
    h: BaseHTTPRequestHandler, status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> None:
    h.send_response(status)
    for name, value in (headers or {}).items():
        h.send_header(name, value)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


def reply_json(h: BaseHTTPRequestHandler, status: int, obj: object) -> None:
    reply(h, status, json.dumps(obj).encode(), {"Content-Type": "application/json"})
