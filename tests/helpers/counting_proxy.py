"""A loopback HTTP reverse proxy that counts body bytes, for "nothing moved" tests.

``start_counting_proxy(upstream)`` listens on a free 127.0.0.1 port and
forwards every request to ``upstream`` ("127.0.0.1:PORT"), keeping the
client's ``Host`` header so the registry's upload ``Location``s point back
through the proxy. Each exchange is recorded with the byte counts of the
request body (after undoing chunked transfer coding) and of the response
body, so a test can assert that ``affix`` downloaded no base layer and
uploaded little more than its new layer.

Bodies are buffered whole in both directions: fine for test images, and it
keeps the proxy obviously correct.
"""

from __future__ import annotations

import http.client
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
     "trailer", "transfer-encoding", "upgrade", "content-length"}
)
_BLOB_GET = re.compile(r"^/v2/.+/blobs/(sha256:[0-9a-f]{64})")


@dataclass(frozen=True, slots=True)
class Exchange:
    method: str
    path: str
    status: int
    request_bytes: int
    response_bytes: int


@dataclass
class CountingProxy:
    host: str
    upstream: str
    exchanges: list[Exchange] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)

    def reset(self) -> None:
        with self._lock:
            self.exchanges.clear()

    @property
    def uploaded(self) -> int:
        """Request body bytes, in all."""
        return sum(e.request_bytes for e in self.exchanges)

    @property
    def downloaded(self) -> int:
        """Response body bytes, in all."""
        return sum(e.response_bytes for e in self.exchanges)

    def blob_downloads(self) -> dict[str, int]:
        """Response bytes of blob GETs, by digest."""
        out: dict[str, int] = {}
        for e in self.exchanges:
            m = _BLOB_GET.match(e.path)
            if e.method == "GET" and m:
                out[m.group(1)] = out.get(m.group(1), 0) + e.response_bytes
        return out

    def writes(self) -> list[Exchange]:
        """Every request that could change the registry."""
        return [e for e in self.exchanges if e.method in ("POST", "PUT", "PATCH", "DELETE")]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        parts: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def _handler(proxy: CountingProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return None

        def _forward(self) -> None:
            body = _read_body(self)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or self.command in ("POST", "PUT", "PATCH"):
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
            try:
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                if self.command == "HEAD":
                    length = resp.getheader("Content-Length")
                    if length is not None:
                        self.send_header("Content-Length", length)
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            finally:
                conn.close()
            proxy.record(Exchange(self.command, self.path, resp.status, len(body), len(data)))

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    return Handler


def start_counting_proxy(upstream: str) -> CountingProxy:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy := CountingProxy("", upstream)))
    server.daemon_threads = True
    proxy.host = f"127.0.0.1:{server.server_address[1]}"
    proxy._server = server
    threading.Thread(target=server.serve_forever, name="counting-proxy", daemon=True).start()
    return proxy
