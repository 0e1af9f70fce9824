"""A blob body read from the connection itself, past h11: for big downloads.

Through httpx, every body byte is copied three times on the trio loop before
anyone sees it: into h11's receive buffer, out of it into an event, and into
the ``bytes`` httpcore yields (h11 0.16, httpcore 1.0), with the GIL held
all along. For a 1 GiB layer that was ~0.5 s of the loop's time and half of
what held the GIL while ``extract`` ran (py-spy ``--gil``, perf: memmove
called from h11 and httpcore): the decode, hash and write threads waited on
it. Here the body of a ``Content-Length`` response is read straight from the
connection's stream (``network_stream``, httpcore's extension: the socket, or
the TLS stream over it), a copy the kernel or the TLS layer makes anyway.
Given a buffer (``into``: ``BlobStream.fill``, the blob cache's ranged GETs),
a plain-HTTP body goes from the socket straight into it (``recv_into``): the
kernel's copy is then the only one.

How, and why it is safe:

* The request, its auth, redirects and headers all go through httpx as
  ever; only the body of a response whose headers are already parsed is
  read here, and only for HTTP/1.1 with a ``Content-Length`` (no chunked
  framing to undo) and at least ``DIRECT_MIN`` bytes after the first chunk
  over TLS, ``DIRECT_MIN_PLAIN`` over plain HTTP (a small body goes through
  h11, and its connection is reused).
* The first chunk still comes through httpx: h11 may hold body bytes that
  arrived with the headers, and it hands out everything it holds (up to
  the body's length) as one event, so after that first chunk the rest of
  the body is on the connection, unread. Exactly the body's remaining
  length is then read from it, never more.
* h11 never sees those bytes, so the connection is closed afterwards, never
  reused: ``_abandon`` closes it, then lets httpx's own read of the body,
  pending since the first chunk, fail on it (``httpx.ReadError``, caught),
  so that httpx's and httpcore's chain of generators ends there and then,
  and httpcore drops the connection from its pool.
* Errors are httpcore's (``ReadError``, ``ReadTimeout``); they are raised as
  httpx's, as ``aiter_raw`` would have, so retries and resumes above are
  unchanged. A body that ends early is a ``RemoteProtocolError``, as in h11.

Anything else (HTTP/2, chunked bodies, no network stream) is read through
``aiter_raw``.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

import httpcore
import httpx
import trio

#: Bytes asked of the connection per read. Each read costs the trio loop some
#: Python whatever its size (httpcore's read: a cancel scope and an exception
#: map; trio's receive; the generators above; the hand-off to a worker), and a
#: blob streamed at full speed fills the socket's buffer beyond 4 MiB: 4 MiB
#: reads rather than 1 MiB cut extract's CPU per GiB by ~0.25 s (user and
#: system; docs/benchmarks.md, "Issue 12"). Consumers bound what they queue
#: in bytes (``image.pipe``, ``BackgroundHash``), not in chunks.
READ = 4 * 1024 * 1024
#: Over TLS, bodies with at least this much left after the first chunk are read
#: directly; smaller ones go through h11, which can then reuse the connection:
#: the mount's ranged GETs (16 MiB at most) keep their connections, and a new
#: connection (a TLS handshake) costs far less than h11 would on 32 MiB.
DIRECT_MIN = 32 * 1024 * 1024
#: The same over plain HTTP, where a new connection costs one round trip and no
#: handshake: the mount's ranged GETs are read directly too. A ``cp`` of 1 GiB
#: through a mount of a zstd image (16 MiB GETs, test registry on loopback):
#: the daemon's loop 1.86 -> 1.65 CPU-s, the whole daemon 4.28 -> 4.07 s
#: (medians of 3, interleaved): h11's copies of every byte, gone. Reading into
#: the caller's buffer (``into``, ``recv_into``) then took the loop 1.65 -> 1.55
#: CPU-s on the same ``cp`` and 1.69 -> 1.45 on a gzip one (a third fewer page
#: faults: no 4 MiB ``bytes`` per read to fault in and copy out of).
DIRECT_MIN_PLAIN = 1024 * 1024


class _NetworkStream(Protocol):
    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes: ...  # noqa: ASYNC109

    async def aclose(self) -> None: ...

    def get_extra_info(self, info: str) -> object: ...


def _raw_stream(response: httpx.Response) -> tuple[_NetworkStream, int] | None:
    """The connection's stream and the body's length, when the body may be read from it."""
    stream = response.extensions.get("network_stream")
    length = response.headers.get("content-length", "")
    if (
        stream is None
        or not hasattr(stream, "read")
        or response.extensions.get("http_version") != b"HTTP/1.1"
        or "transfer-encoding" in response.headers
        or not length.isdigit()
    ):
        return None
    return stream, int(length)


async def body_chunks(
    response: httpx.Response,
    stall: float | None,
    direct_min: int | None = None,
    into: memoryview | None = None,
) -> AsyncGenerator[bytes | memoryview, None]:
    """The raw body of a streamed response, as ``response.aiter_raw()`` gives it;
    ``stall``: seconds without a byte before a read fails (``httpx.ReadTimeout``);
    ``direct_min``: ``DIRECT_MIN`` over TLS, else ``DIRECT_MIN_PLAIN``, unless given.

    ``into``: a writable buffer for the body. Read directly over plain HTTP, the
    body then goes from the socket straight into it (``recv_into``), and the
    chunks yielded are views of ``into`` where their bytes belong: a chunk that
    is a view of ``into``'s object is in place already (the others, e.g. the
    first one, through h11, are to be copied there). Unused if the body is
    longer than ``into``."""
    through_h11 = response.aiter_raw()
    raw = _raw_stream(response)
    tls = raw is not None and raw[0].get_extra_info("ssl_object") is not None
    if direct_min is None:
        direct_min = DIRECT_MIN if tls else DIRECT_MIN_PLAIN
    left = raw[1] if raw is not None else 0
    if into is not None and (tls or len(into) < left):
        into = None
    pos = 0  # bytes of the body yielded so far
    async for chunk in through_h11:  # the first chunk: what h11 holds, or one read
        left -= len(chunk)
        pos += len(chunk)
        yield chunk
        if raw is not None and left >= direct_min:
            break
    else:
        return  # all through h11: the connection may serve another request
    assert raw is not None
    stream = raw[0]
    sock = stream.get_extra_info("socket") if into is not None else None
    try:
        while left > 0:
            if isinstance(sock, trio.socket.SocketType) and into is not None:
                n = await _recv_into(sock, into[pos : pos + min(left, READ)], stall)
                piece: bytes | memoryview = into[pos : pos + n]
            else:
                piece = await _read(stream, min(left, READ), stall)
            left -= len(piece)
            pos += len(piece)
            yield piece
    except GeneratorExit:
        # Closed early, maybe by trio's finalizer of abandoned generators, which
        # may also be closing us through our caller at the same time: no awaits
        # here (a second ``aclose`` of a generator suspended in one fails with
        # "already running"). The response's close then drops the connection:
        # h11 has not seen the body's end.
        raise
    except BaseException:
        with trio.CancelScope(shield=True):
            await _abandon(stream, through_h11)
        raise
    with trio.CancelScope(shield=True):
        await _abandon(stream, through_h11)


async def _abandon(stream: _NetworkStream, through_h11: AsyncIterator[bytes]) -> None:
    """Close the connection, then let httpx's own pending read of the body fail
    on it: its chain of generators then ends, rather than lingering until
    collected (trio warns of those), and httpcore drops the connection."""
    await stream.aclose()
    with contextlib.suppress(httpx.TransportError, StopAsyncIteration):
        await anext(through_h11)


async def _recv_into(sock: trio.socket.SocketType, buf: memoryview, stall: float | None) -> int:
    """One ``recv_into`` of the connection's socket, errors as ``_read``'s."""
    try:
        with trio.fail_after(float("inf") if stall is None else stall):
            n = await sock.recv_into(buf)
    except trio.TooSlowError as exc:
        raise httpx.ReadTimeout("timed out reading the blob") from exc
    except OSError as exc:
        raise httpx.ReadError(str(exc) or "connection lost reading the blob") from exc
    if not n:
        raise httpx.RemoteProtocolError("the connection closed before the body's end")
    return n


async def _read(stream: _NetworkStream, size: int, stall: float | None) -> bytes:
    try:
        chunk = await stream.read(size, stall)
    except httpcore.TimeoutException as exc:
        raise httpx.ReadTimeout(str(exc) or "timed out reading the blob") from exc
    except httpcore.NetworkError as exc:
        raise httpx.ReadError(str(exc) or "connection lost reading the blob") from exc
    if not chunk:
        raise httpx.RemoteProtocolError("the connection closed before the body's end")
    tls = stream.get_extra_info("ssl_object")
    if isinstance(tls, ssl.SSLObject) and len(chunk) < size:
        return _drain(tls, chunk, size)
    return chunk


def _drain(tls: ssl.SSLObject, first: bytes, size: int) -> bytes:
    """``first`` and what else the TLS object holds decrypted-ready, up to ``size``.

    trio's ``SSLStream`` returns one TLS record (16 KiB at most) per read
    however much is asked, at the cost of its whole read path each time: a
    GiB over TLS cost ~5 CPU-s of the loop in 65,536 reads (bare client,
    loopback server). The records already received sit in the TLS object's
    incoming buffer; reading them from it directly, until it wants more from
    the network, costs one ``SSL_read`` each. Whatever stops it (the buffer
    is empty, a record must be written, the peer closed, an error) is left
    to trio's next read, which meets it as it would have.
    """
    parts, got = [first], len(first)
    while got < size:
        try:
            more = tls.read(size - got)
        except ssl.SSLError:  # wants the network, or an error trio's next read reports
            break
        if not more:
            break
        parts.append(more)
        got += len(more)
    return parts[0] if len(parts) == 1 else b"".join(parts)
