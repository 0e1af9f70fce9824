"""Loopback HTTP plumbing for the test harness: servers, bodies, a streaming proxy.

Everything here is stdlib ``http.server`` and ``http.client``: a
ThreadingHTTPServer per helper, serving one ``App`` callable in daemon
threads, HTTP/1.1 keep-alive, bodies framed by Content-Length or chunked.
``proxy`` streams bodies both ways in ``CHUNK`` pieces, so uploads of tens
of MB pass through without being held in memory.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tools.faultproxy import request_body  # one body reader for both servers

CHUNK = 1 << 16


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

# Headers that describe one connection, not the message (RFC 9110 §7.6.1);
# Host and Expect are also the proxy's own business.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "expect",
    }
)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120  # idle keep-alive connections end eventually
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
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


def reply(h: Handler, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
    h.send_response(status)
    for name, value in (headers or {}).items():
        h.send_header(name, value)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


def reply_json(h: Handler, status: int, obj: object) -> None:
    reply(h, status, json.dumps(obj).encode(), {"Content-Type": "application/json"})


def proxy(h: Handler, upstream: str, *, redirect_to: str | None = None) -> None:
    """Forward the request to ``upstream`` and stream the answer back.

    Bodies stream both ways in ``CHUNK`` pieces. Absolute Locations naming
    the upstream are rewritten to this front. With ``redirect_to``, a 2xx
    answer is dropped and replaced by a 307 to that URL.
    """
    conn = http.client.HTTPConnection(upstream, timeout=120)
    try:
        try:
            resp = _forward(conn, h, upstream)
        except OSError as exc:
            h.close_connection = True
            reply_json(h, 502, {"errors": [{"code": "BAD_GATEWAY", "message": str(exc)}]})
            return
        with resp:
            if redirect_to is not None and 200 <= resp.status < 300:
                reply(h, 307, b"", {"Location": redirect_to})
            else:
                _relay(h, resp, f"http://{upstream}", h.server.origin)
    finally:
        conn.close()


def _forward(
    conn: http.client.HTTPConnection, h: Handler, upstream: str
) -> http.client.HTTPResponse:
    chunked = "chunked" in h.headers.get("Transfer-Encoding", "").lower()
    conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", upstream)
    for name, value in h.headers.items():
        if name.lower() not in _HOP_BY_HOP:
            conn.putheader(name, value)
    if chunked:
        conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    _send_body(conn, h, chunked)
    return conn.getresponse()


def _send_body(conn: http.client.HTTPConnection, h: Handler, chunked: bool) -> None:
    frames = (b"%x\r\n%s\r\n" % (len(d), d) if chunked else d for d in request_body(h))
    ending = [b"0\r\n\r\n"] if chunked else []
    for data in itertools.chain(frames, ending):  # errors reading the client propagate
        try:
            conn.send(data)
        except OSError:
            # The registry may answer (401, 404) and hang up before reading
            # a large body: relay that answer, then drop the client's
            # connection, the rest of its body unread.
            h.close_connection = True
            return


def _relay(h: Handler, resp: http.client.HTTPResponse, upstream: str, front: str) -> None:
    bodiless = h.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
    framed = bodiless or resp.getheader("Content-Length") is not None
    h.send_response_only(resp.status, resp.reason)
    for name, value in resp.getheaders():
        if name.lower() in _HOP_BY_HOP:
            continue
        if name.lower() == "location" and value.startswith(upstream):
            value = front + value[len(upstream) :]
        h.send_header(name, value)
    if not framed:
        h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    if bodiless:
        return
    while data := resp.read(CHUNK):
        h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if not framed else data)
    if not framed:
        h.wfile.write(b"0\r\n\r\n")
