"""A fault-injecting loopback reverse proxy between a registry client and a registry.

    python tools/faultproxy.py --upstream 127.0.0.1:5000 --listen 127.0.0.1:0 \\
        --fault drop-body@1MiB,times=2 --fault 'status@503,times=3,retry-after=1'

then point the client at the printed address (``127.0.0.1:PORT/repo:tag``).
From Python (the reliability tests)::

    proxy = FaultProxy("127.0.0.1:5000").start()
    proxy.set_faults([DropBody(1 << 20, times=1), Status(429, times=2)])
    ...                         # run r8imfs against proxy.host
    proxy.requests              # what passed, with the faults applied to each
    proxy.stop()

Faults can be replaced at any moment (``set_faults``, thread-safe); each
counts its own firings (``times``: fire on the first N matching requests,
None for every one; ``every``: only on every Nth match). Kinds:

==================  =============================================================
``drop-body@N``     cut a response body after N bytes and close the connection
``drop-upload@N``   read N bytes of a request body, then close both connections
``status@CODE``     answer CODE at once (``retry-after=S`` adds that header)
``delay@SECONDS``   wait before forwarding the request
``corrupt@OFFSET``  flip ``length`` bytes at this offset of the blob (Range-aware)
``truncate@N``      keep N bytes of a body, with a matching Content-Length
``replace-body@T``  serve text T instead (Docker-Content-Digest dropped)
``header@NAME=V``   set a response header (on ``status=401`` replies by default)
``redirect-blobs``  answer blob GETs with 307 to a second loopback origin (the
                    "CDN"), which serves them and records every request's headers
``expire-token``    forward the request without its ``Authorization``: the
                    registry answers 401 with its challenge, as for a token
                    that expired in the middle of a transfer
==================  =============================================================

Options after the kind, comma-separated: ``times=N``, ``every=N``,
``methods=GET+HEAD``, ``length=N`` (corrupt), ``retry-after=S`` (status),
``status=N`` (header; ``any`` for every status), ``content-type=T``
(replace-body), and ``match=REGEX`` (a ``re.search`` on the request path),
which must come last because the regex may hold commas.

Bodies stream through in 64 KiB pieces both ways; only ``truncate`` and
``replace-body`` read a (manifest-sized) body whole. The client's ``Host``
header is kept, so the registry's upload ``Location``s point back here.
Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import re
import secrets
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHUNK = 64 * 1024
BLOB_PATH = r"/v2/.+/blobs/sha256:[0-9a-f]{64}"
MANIFEST_PATH = r"/v2/.+/manifests/"
UPLOAD_PATH = r"/v2/.+/blobs/uploads/"
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
        "expect",
    }
)


# -- faults ------------------------------------------------------------------------


@dataclass
class Fault:
    """What every fault shares: which requests it applies to, and how often."""

    match: str = ""
    methods: tuple[str, ...] = ()
    times: int | None = None
    every: int = 1
    fired: int = field(default=0, init=False)
    _seen: int = field(default=0, init=False, repr=False)

    def applies(self, method: str, path: str) -> bool:
        if self.methods and method not in self.methods:
            return False
        return re.search(self.match, path) is not None

    def covers(self, range_header: str | None) -> bool:
        """Whether a request for this ``Range`` is one to count (all, but for ``Corrupt``)."""
        return True

    def fire(self) -> bool:
        """Count a matching request; True if the fault acts on it (caller holds the lock)."""
        self._seen += 1
        if self.times is not None and self.fired >= self.times:
            return False
        if self._seen % max(1, self.every):
            return False
        self.fired += 1
        return True

    @property
    def name(self) -> str:
        return type(self).__name__


@dataclass
class DropBody(Fault):
    """Close the connection after ``after`` bytes of the response body."""

    after: int = 0
    match: str = BLOB_PATH
    methods: tuple[str, ...] = ("GET",)


@dataclass
class DropUpload(Fault):
    """Close both connections after ``after`` bytes of the request body."""

    after: int = 0
    match: str = UPLOAD_PATH
    methods: tuple[str, ...] = ("PATCH", "PUT")


@dataclass
class Status(Fault):
    """Answer ``code`` without asking the registry."""

    code: int = 503
    retry_after: str | None = None  # a Retry-After header, if set
    match: str = r"^/v2/"


@dataclass
class Delay(Fault):
    seconds: float = 1.0
    match: str = r"^/v2/"


@dataclass
class Corrupt(Fault):
    """Flip (xor 0xff) ``length`` bytes from ``offset`` of the blob served."""

    offset: int = 0
    length: int = 1
    match: str = BLOB_PATH
    methods: tuple[str, ...] = ("GET",)

    def covers(self, range_header: str | None) -> bool:
        """Only requests whose range holds a flipped byte count (``times`` means it)."""
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", (range_header or "").strip())
        if m is None:
            return True  # the whole blob, or a range form we do not read
        first, last = int(m[1]), int(m[2]) if m[2] else None
        return first < self.offset + self.length and (last is None or self.offset <= last)


@dataclass
class Truncate(Fault):
    keep: int = 0
    match: str = MANIFEST_PATH
    methods: tuple[str, ...] = ("GET",)


@dataclass
class ReplaceBody(Fault):
    body: bytes = b""
    content_type: str | None = None
    match: str = MANIFEST_PATH
    methods: tuple[str, ...] = ("GET",)


@dataclass
class SetHeader(Fault):
    """Set (or with ``value`` None, remove) a response header on ``status`` replies."""

    header: str = "WWW-Authenticate"
    value: str | None = None
    status: int | None = 401
    match: str = r"^/v2/"


@dataclass
class ExpireToken(Fault):
    """Forward without ``Authorization``, so the registry refuses it (401)."""

    match: str = r"^/v2/.+/blobs/"


@dataclass
class RedirectBlobs(Fault):
    """Blob GETs the registry would serve become a 307 to the CDN origin."""

    match: str = BLOB_PATH
    methods: tuple[str, ...] = ("GET",)
    reject_auth: bool = True  # answer 400 when Authorization arrives (S3 does)


# -- the request log ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Logged:
    """One exchange; ``server`` is "proxy" or "cdn"; ``headers`` lower-cased."""

    server: str
    method: str
    path: str
    headers: dict[str, str]
    status: int
    sent: int  # response body bytes written to the client
    faults: tuple[str, ...]
    started: float = 0.0  # time.monotonic() when the request arrived
    seconds: float = 0.0  # until the reply was written (or the connection cut)
    received: int = 0  # request body bytes forwarded upstream (chunk framing undone)


# -- the proxy ---------------------------------------------------------------------


class FaultProxy:
    """The proxy (``host``) and its CDN origin (``cdn_host``), each a server thread."""

    def __init__(self, upstream: str, listen: str = "127.0.0.1:0") -> None:
        self.upstream = upstream
        self._listen = listen
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._logged = threading.Condition(self._lock)
        self._log: list[Logged] = []
        self._stash: dict[str, tuple[str, str | None]] = {}
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self.host = self.cdn_host = ""
        self.echo = False  # print each exchange on stderr (the command line does)
        # Tests' fronts (tests/helpers): called first on each request to the proxy
        # (not the CDN); it may edit the request, or answer it and return True.
        self.local: Callable[[BaseHTTPRequestHandler], bool] | None = None

    # -- lifecycle
    def start(self) -> FaultProxy:
        host, _, port = self._listen.rpartition(":")
        main = _Server((host or "127.0.0.1", int(port or 0)), self, cdn=False)
        try:
            cdn = _Server((_second_loopback(), 0), self, cdn=True)
        except BaseException:
            main.server_close()
            raise
        self._servers = [main, cdn]
        self.host, self.cdn_host = main.hostport, cdn.hostport
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
            server.drop_connections()
        for thread in self._threads:
            thread.join(timeout=10)
        self._servers, self._threads = [], []

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults and the log
    def set_faults(self, faults: Sequence[Fault]) -> None:
        with self._lock:
            self._faults = list(faults)

    def clear(self) -> None:
        """No faults, empty log."""
        with self._lock:
            self._faults = []
            self._log.clear()

    @property
    def requests(self) -> list[Logged]:
        """Exchanges so far (each is logged once its reply is written, or failed)."""
        with self._lock:
            return list(self._log)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Logged]:
        """The log once it holds ``count`` exchanges (a client may finish before the log)."""
        with self._logged:
            self._logged.wait_for(lambda: len(self._log) >= count, timeout)
            return list(self._log)

    @property
    def cdn_requests(self) -> list[Logged]:
        return [r for r in self.requests if r.server == "cdn"]

    def fired(self, method: str, path: str, range_header: str | None = None) -> list[Fault]:
        with self._lock:
            return [
                f
                for f in self._faults
                if f.applies(method, path) and f.covers(range_header) and f.fire()
            ]

    def record(self, entry: Logged) -> None:
        with self._logged:
            self._log.append(entry)
            self._logged.notify_all()
        if self.echo:
            tag = f" [{', '.join(entry.faults)}]" if entry.faults else ""
            print(
                f"{entry.server} {entry.method} {entry.path} -> {entry.status}"
                f" ({entry.sent} B){tag}",
                file=sys.stderr,
                flush=True,
            )

    def stash(self, path: str, authorization: str | None) -> str:
        key = secrets.token_hex(8)
        with self._lock:
            self._stash[key] = (path, authorization)
        return key

    def unstash(self, key: str) -> tuple[str, str | None] | None:
        with self._lock:
            return self._stash.get(key)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], proxy: FaultProxy, *, cdn: bool) -> None:
        self.proxy = proxy
        self.cdn = cdn
        self.connections: set[socket.socket] = set()
        super().__init__(address, _Handler)
        host, port = self.server_address[:2]
        self.hostport = f"{host!s}:{port}"

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup nobody needs here.
        socketserver.TCPServer.server_bind(self)

    def drop_connections(self) -> None:
        for conn in list(self.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def _second_loopback() -> str:
    """127.0.0.2 where it binds (Linux), so the CDN is another host, not just a port."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.2", 0))
        except OSError:
            return "127.0.0.1"
    return "127.0.0.2"


def _no_delay(sock: socket.socket) -> None:
    """Send small writes at once. A reply goes out as headers, then body pieces:
    with Nagle's algorithm on, a piece waits for the ACK of the headers, which
    the other side delays (~40 ms on Linux) for every exchange."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Dropped(Exception):
    """The fault closed the connection on purpose."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120
    server: _Server

    def setup(self) -> None:
        super().setup()
        _no_delay(self.connection)
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _dispatch(self) -> None:
        ex = _Exchange(self)
        try:
            ex.run()
        except _Dropped:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            self.close_connection = True
        finally:
            ex.log()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch


class _Exchange:
    """One request through the proxy: faults chosen up front, then forwarded."""

    def __init__(self, h: _Handler) -> None:
        self.h = h
        self.proxy = h.server.proxy
        self.target = h.path  # what goes upstream: the registry path, with its query
        self.path = h.path.split("?", 1)[0]
        self.status = 0
        self.sent = 0
        self.received = 0
        self.faults: list[Fault] = []
        self.auth: str | None = None
        self.started = time.monotonic()

    def log(self) -> None:
        headers = {k.lower(): v for k, v in self.h.headers.items()}
        self.proxy.record(
            Logged(
                "cdn" if self.h.server.cdn else "proxy",
                self.h.command,
                self.h.path,
                headers,
                self.status,
                self.sent,
                tuple(f.name for f in self.faults),
                self.started,
                time.monotonic() - self.started,
                self.received,
            )
        )

    def of(self, kind: type[Fault]) -> Any:
        return next((f for f in self.faults if isinstance(f, kind)), None)

    def run(self) -> None:
        h = self.h
        if not h.server.cdn and self.proxy.local is not None and self.proxy.local(h):
            return
        if h.server.cdn and not self._from_stash():
            return
        self.faults = self.proxy.fired(h.command, self.path, h.headers.get("Range"))
        if h.server.cdn:  # the CDN serves what it was sent to serve
            self.faults = [f for f in self.faults if not isinstance(f, RedirectBlobs)]
        delay = self.of(Delay)
        if delay is not None:
            time.sleep(delay.seconds)
        status = self.of(Status)
        if status is not None:
            self._status(status)
            return
        conn = http.client.HTTPConnection(self.proxy.upstream, timeout=120)
        try:
            try:
                conn.connect()
                _no_delay(conn.sock)
                resp = self._forward(conn)
            except (OSError, http.client.HTTPException) as exc:
                h.close_connection = True
                body = json.dumps({"errors": [{"code": "BAD_GATEWAY", "message": str(exc)}]})
                self._reply(502, body.encode(), {"Content-Type": "application/json"})
                return
            with resp:
                redirect = self.of(RedirectBlobs)
                if redirect is not None and 200 <= resp.status < 300 and h.command == "GET":
                    self._redirect()
                else:
                    self._relay(resp)
        finally:
            conn.close()

    # -- the CDN side
    def _from_stash(self) -> bool:
        """Map /cdn/<key> back to the registry path; False if answered already."""
        h = self.h
        match = re.fullmatch(r"/cdn/([0-9a-f]{16})", self.path)
        found = self.proxy.unstash(match[1]) if match else None
        if found is None:
            self._reply(404, b'{"code": "NoSuchKey"}')
            return False
        if "authorization" in {k.lower() for k in h.headers} and self._rejects_auth():
            self._reply(400, b'{"code": "InvalidArgument", "message": "Only one auth mechanism"}')
            return False
        self.target, self.auth = found
        self.path = self.target.split("?", 1)[0]
        return True

    def _rejects_auth(self) -> bool:
        with self.proxy._lock:
            return any(isinstance(f, RedirectBlobs) and f.reject_auth for f in self.proxy._faults)

    def _redirect(self) -> None:
        h = self.h
        key = self.proxy.stash(self.target, h.headers.get("Authorization"))
        location = f"http://{self.proxy.cdn_host}/cdn/{key}"
        self._reply(307, b"", {"Location": location})

    # -- answering without the registry
    def _status(self, fault: Status) -> None:
        self.h.close_connection = True  # the request body (if any) stays unread
        body = json.dumps(
            {"errors": [{"code": "UNAVAILABLE", "message": f"faultproxy: HTTP {fault.code}"}]}
        ).encode()
        headers = {"Content-Type": "application/json"}
        if fault.retry_after is not None:
            headers["Retry-After"] = fault.retry_after
        self._reply(fault.code, body, headers)

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        h = self.h
        self.status = status
        h.send_response(status)
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
            self.sent = len(body)

    # -- forwarding
    def _forward(self, conn: http.client.HTTPConnection) -> http.client.HTTPResponse:
        h = self.h
        chunked = "chunked" in h.headers.get("Transfer-Encoding", "").lower()
        conn.putrequest(h.command, self.target, skip_host=True, skip_accept_encoding=True)
        host = None if h.server.cdn else h.headers.get("Host")
        conn.putheader("Host", host or self.proxy.upstream)
        for name, value in h.headers.items():
            if name.lower() in _HOP_BY_HOP or name.lower() == "host":
                continue
            if name.lower() == "authorization" and (h.server.cdn or self.of(ExpireToken)):
                continue
            conn.putheader(name, value)
        if self.auth:
            conn.putheader("Authorization", self.auth)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        self._send_body(conn, chunked)
        return conn.getresponse()

    def _send_body(self, conn: http.client.HTTPConnection, chunked: bool) -> None:
        drop = self.of(DropUpload)
        done = 0
        frames = (b"%x\r\n%s\r\n" % (len(d), d) if chunked else d for d in self._request_body())
        for data in itertools.chain(frames, [b"0\r\n\r\n"] if chunked else []):
            if drop is not None and done + len(data) > drop.after:
                conn.send(data[: max(0, drop.after - done)])
                conn.close()
                raise _Dropped
            done += len(data)
            try:
                conn.send(data)
            except OSError:
                self.h.close_connection = True  # the registry answered early: relay that
                return

    def _request_body(self) -> Iterator[bytes]:
        for data in request_body(self.h):
            self.received += len(data)
            yield data

    def _relay(self, resp: http.client.HTTPResponse) -> None:
        h = self.h
        self.status = resp.status
        headers = self._response_headers(resp)
        bodiless = h.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
        whole = None
        if not bodiless and (self.of(Truncate) or self.of(ReplaceBody)):
            whole = self._rewrite_body(resp.read(), headers)
        length = headers.get("content-length")
        h.send_response_only(resp.status, resp.reason)
        for name, value in headers.items():
            h.send_header(name, value)
        framed = bodiless or length is not None
        if not framed:
            h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        if bodiless:
            return
        pieces = iter([whole]) if whole is not None else _pieces(resp)
        self._stream(pieces, _body_start(resp), chunked=not framed)

    def _response_headers(self, resp: http.client.HTTPResponse) -> dict[str, str]:
        headers: dict[str, str] = {}
        upstream = f"http://{self.proxy.upstream}"
        for name, value in resp.getheaders():
            if name.lower() in _HOP_BY_HOP:
                continue
            if name.lower() == "location" and value.startswith(upstream):
                value = f"http://{self.proxy.host}" + value[len(upstream) :]
            headers[name.lower()] = value
        for fault in self.faults:
            if isinstance(fault, SetHeader) and fault.status in (None, resp.status):
                headers.pop(fault.header.lower(), None)
                if fault.value is not None:
                    headers[fault.header.lower()] = fault.value
        return headers

    def _rewrite_body(self, body: bytes, headers: dict[str, str]) -> bytes:
        replace = self.of(ReplaceBody)
        if replace is not None:
            body = replace.body
            headers.pop("docker-content-digest", None)
            if replace.content_type:
                headers["content-type"] = replace.content_type
        truncate = self.of(Truncate)
        if truncate is not None:
            body = body[: truncate.keep]
        headers["content-length"] = str(len(body))
        return body

    def _stream(self, pieces: Iterator[bytes], start: int, *, chunked: bool) -> None:
        wfile = self.h.wfile
        drop = self.of(DropBody)
        corrupt = self.of(Corrupt)
        pos = start
        for data in pieces:
            if corrupt is not None:
                data = _flip(data, pos, corrupt.offset, corrupt.length)
            if drop is not None and self.sent + len(data) > drop.after:
                data = data[: max(0, drop.after - self.sent)]
                self._write(wfile, data, chunked)
                raise _Dropped
            self._write(wfile, data, chunked)
            pos += len(data)
        if chunked:
            wfile.write(b"0\r\n\r\n")

    def _write(self, wfile: Any, data: bytes, chunked: bool) -> None:
        if not data:
            return
        wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        self.sent += len(data)


def _pieces(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    while data := resp.read(CHUNK):
        yield data


def _body_start(resp: http.client.HTTPResponse) -> int:
    """Where in the blob this body begins: the start of a 206's Content-Range."""
    if resp.status != 206:
        return 0
    match = re.match(r"bytes (\d+)-", resp.getheader("Content-Range") or "")
    return int(match[1]) if match else 0


def _flip(data: bytes, pos: int, offset: int, length: int) -> bytes:
    lo, hi = max(offset, pos), min(offset + length, pos + len(data))
    if lo >= hi:
        return data
    out = bytearray(data)
    for i in range(lo - pos, hi - pos):
        out[i] ^= 0xFF
    return bytes(out)


def request_body(h: BaseHTTPRequestHandler) -> Iterator[bytes]:
    """A request body as it arrives, chunked or Content-Length framed (also used by
    the test registry harness, tests/helpers/loopback.py)."""
    if "chunked" in h.headers.get("Transfer-Encoding", "").lower():
        yield from _read_chunked(h)
        return
    remaining = int(h.headers.get("Content-Length") or 0)
    while remaining:
        data = h.rfile.read(min(remaining, CHUNK))
        if not data:
            raise ConnectionError("client closed mid-body")
        remaining -= len(data)
        yield data


def _read_chunked(h: BaseHTTPRequestHandler) -> Iterator[bytes]:
    while True:
        line = h.rfile.readline(1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ConnectionError(f"bad chunk size line {line[:40]!r}") from None
        if size == 0:
            while h.rfile.readline(1024).strip():
                pass  # trailers
            return
        while size:
            data = h.rfile.read(min(size, CHUNK))
            if not data:
                raise ConnectionError("client closed mid-chunk")
            size -= len(data)
            yield data
        h.rfile.readline(1024)


# -- fault specs, for the command line ---------------------------------------------

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMG]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if match is None:
        raise ValueError(f"not a size: {text!r} (e.g. 4096, 64K, 1MiB)")
    return int(match[1]) * _UNITS[match[2].upper()]


def parse_fault(spec: str) -> Fault:
    """``KIND[@ARG][,key=value...][,match=REGEX]`` as a Fault (see the module doc)."""
    head, _, tail = spec.partition(",match=")
    parts = head.split(",")
    kind, _, arg = parts[0].partition("@")
    opts = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    common: dict[str, Any] = {}
    if tail:
        common["match"] = tail
    if "times" in opts:
        common["times"] = int(opts.pop("times"))
    if "every" in opts:
        common["every"] = int(opts.pop("every"))
    if "methods" in opts:
        common["methods"] = tuple(opts.pop("methods").upper().split("+"))
    fault = _build(kind, arg, opts, common)
    if opts:
        raise ValueError(f"{spec!r}: unknown option(s) {', '.join(opts)}")
    return fault


def _build(kind: str, arg: str, opts: dict[str, str], common: dict[str, Any]) -> Fault:
    if kind == "drop-body":
        return DropBody(after=parse_size(arg), **common)
    if kind == "drop-upload":
        return DropUpload(after=parse_size(arg), **common)
    if kind == "status":
        return Status(code=int(arg), retry_after=opts.pop("retry-after", None), **common)
    if kind == "delay":
        return Delay(seconds=float(arg.rstrip("s")), **common)
    if kind == "corrupt":
        length = parse_size(opts.pop("length", "1"))
        return Corrupt(offset=parse_size(arg), length=length, **common)
    if kind == "truncate":
        return Truncate(keep=parse_size(arg), **common)
    if kind == "replace-body":
        return ReplaceBody(body=arg.encode(), content_type=opts.pop("content-type", None), **common)
    if kind == "header":
        name, _, value = arg.partition("=")
        status = opts.pop("status", "401")
        return SetHeader(
            header=name, value=value, status=None if status == "any" else int(status), **common
        )
    if kind == "redirect-blobs":
        return RedirectBlobs(**common)
    if kind == "expire-token":
        return ExpireToken(**common)
    raise ValueError(f"unknown fault kind {kind!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="faultproxy",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="fault kinds: drop-body@N drop-upload@N status@CODE delay@SECONDS "
        "corrupt@OFFSET truncate@N replace-body@TEXT header@NAME=VALUE redirect-blobs; "
        "options: times=N every=N methods=GET+HEAD length=N retry-after=S status=N|any "
        "content-type=T match=REGEX (last). Example: --fault drop-body@1MiB,times=2",
    )
    parser.add_argument("--upstream", required=True, help="registry host:port")
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port (default: a free port)")
    parser.add_argument("--fault", action="append", default=[], help="a fault spec (repeatable)")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not log each request")
    args = parser.parse_args(argv)
    try:
        faults = [parse_fault(s) for s in args.fault]
    except ValueError as exc:
        parser.error(str(exc))
    proxy = FaultProxy(args.upstream, args.listen)
    proxy.echo = not args.quiet
    proxy.set_faults(faults)
    proxy.start()
    print(
        f"faultproxy: {proxy.host} -> {args.upstream} (CDN {proxy.cdn_host}); "
        f"{len(faults)} fault(s); Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
