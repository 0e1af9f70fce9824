"""One sequential pass over a gzip layer, its spans inflated in parallel (SOCI).

A plain gzip pass runs on one core: each byte's meaning depends on the bytes
before it. A zTOC breaks the stream into spans that can each be resumed from
a checkpoint, so a reader of the *whole* layer (``extract``) can read the
compressed stream once, in order, cut it into spans as it arrives, and
inflate several at once on a thread pool (libz through ctypes drops the GIL),
handing the decoded spans on in order.

``SpanInflater(raw, z, spans, pool=...)`` is a read-only file of the layer's
uncompressed tar, the drop-in for ``Codec.inflate(raw)``; ``decoded()``
yields the same tar as whole decoded spans, without a copy. What each byte
costs, and nothing more (these passes are most of ``extract``'s CPU):

* a compressed byte is copied once, from the chunk it arrived in into its
  span's own buffer, which has room around it for libdeflate's edits
  (``zran.spacious``); the pool task hashes that buffer (the span's sha256,
  checked against the zTOC *before* anything is inflated) and inflates it
  where it is (``zran.inflate_span``, ``in_place``: no second copy), one task
  per span, so hash and inflate of a span run on the same core back to back;
* a decoded byte is written once, by libdeflate (or libz), into the span's
  output buffer, which is what ``decoded()`` hands on (``read`` copies only a
  partial span).

**The zTOC is checked against the data.** Every span but the last is
inflated to its end and one step more: the stream must stand exactly at the
next checkpoint (a block boundary, its compressed offset and bit count), and
that checkpoint's 32 KiB window must equal the last 32 KiB actually decoded
before it; the first checkpoint must be where the gzip header ends; the last
span is inflated to the stream's end, which must hold only zeros (the tar's
padding) after the size the zTOC gives. By
induction the tar handed on is then the gzip stream's own decoding of the
bytes the span digests cover, whatever else the zTOC claims: a lying
window, offset or size is a ``CorruptLayer``, never wrong bytes. Only the
span digests themselves must be trusted (see ``ops/extract`` and
docs/soci.md: pinned by a v2 index, they are; a v1 index's are not, so its
caller also hashes the whole blob, through ``on_bytes``).

``raw`` is read to its end and must hold exactly the zTOC's compressed size
(more is a ``CorruptLayer`` too). At most ``window`` spans are in flight
(about ``window`` × (compressed + decoded span) of memory).
"""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from typing import IO

from r8imfs.engine.codecs import zran, ztoc
from r8imfs.engine.codecs.socireader import check_span
from r8imfs.errors import CorruptLayer

READ = 1024 * 1024
#: Bytes of a span kept (a copy) for the next one: spans share at most the byte
#: their checkpoint's bits are in (more is refused as a zTOC that overlaps).
_SHARED = 8

#: called with each compressed chunk as it is read (a view: use it before returning)
OnBytes = Callable[[memoryview], object]


class ZtocMismatch(CorruptLayer):
    """The zTOC does not describe the stream its spans hold: a checkpoint's
    window, offset or size is not the data's, or a verified span does not
    inflate. Not the blob's fault when its span digests are to be trusted."""


class BlobSizeMismatch(CorruptLayer):
    """The blob is shorter or longer than its zTOC says: not the blob."""


def default_window() -> int:
    return 2 * (os.cpu_count() or 2)


class SpanInflater(io.RawIOBase):
    """The uncompressed tar of ``raw`` (the layer blob, read once in order)."""

    def __init__(
        self,
        raw: IO[bytes],
        z: ztoc.Ztoc,
        spans: ztoc.Spans,
        *,
        pool: Executor,
        window: int | None = None,
        name: str = "layer",
        on_bytes: OnBytes | None = None,
    ) -> None:
        super().__init__()
        self._z = z
        self._spans = spans
        self._pool = pool
        self._window = max(1, window or default_window())
        self._name = name
        self._source = _Source(raw, on_bytes, name, z.compressed_archive_size)
        self._gzip = z.compression != ztoc.UNCOMPRESSED
        self._next = 0  # next span to submit
        self._pending: deque[Future[bytearray | bytes]] = deque()
        self._prev = b""  # the last bytes of the span submitted last, compressed
        self._tail = bytes(zran.WINDOW)  # the last WINDOW bytes handed on, zero-padded
        self._handed = 0  # decoded spans handed on
        self._out: memoryview = memoryview(b"")  # the decoded span being read, from _pos
        self._pos = 0

    def readable(self) -> bool:
        return True

    def decoded(self) -> Iterator[bytearray | bytes]:
        """The rest of the tar, a whole decoded span at a time (the buffers
        themselves: not to be modified). Not to be mixed with ``read``."""
        while (span := self._next_span()) is not None:
            yield span

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if not self._current():
            return 0
        n = min(len(buffer), len(self._out) - self._pos)
        memoryview(buffer).cast("B")[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        """At most the rest of one decoded span (or ``size``)."""
        if not self._current():
            return b""
        left = len(self._out) - self._pos
        n = left if size is None or size < 0 else min(size, left)
        data = bytes(self._out[self._pos : self._pos + n])
        self._pos += n
        return data

    def finish(self, *, check: bool = True) -> None:
        """Stop early (the untar has what it wants): the spans in flight are
        dropped and the rest of ``raw`` is read to its end (through
        ``on_bytes``), its length checked unless ``check`` is False."""
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()
        self._next = len(self._spans)
        self._source.drain(check=check)

    def close(self) -> None:
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()
        super().close()

    def _current(self) -> bool:
        """A decoded span with bytes left to hand on; False at the end."""
        while self._pos >= len(self._out):
            span = self._next_span()
            if span is None:
                return False
            self._out, self._pos = memoryview(span), 0
        return True

    def _next_span(self) -> bytearray | bytes | None:
        """The next decoded span, its window checked against what came before."""
        self._submit()
        if not self._pending:
            return None
        span = self._pending.popleft().result()
        i = self._handed
        self._handed += 1
        if self._gzip:
            self._check_window(i)
            self._tail = (self._tail + memoryview(span)[-zran.WINDOW :])[-zran.WINDOW :]
        return span

    def _check_window(self, i: int) -> None:
        if i == 0:
            return  # nothing before the stream's start may be referred to
        cp = self._spans.checkpoints[i]
        known = min(cp.out, zran.WINDOW)  # bytes before the stream start are padding
        if cp.window[zran.WINDOW - known :] != self._tail[zran.WINDOW - known :]:
            raise ZtocMismatch(
                f"{self._name}: zTOC checkpoint {i}'s window is not the 32 KiB decoded before it"
            )

    def _submit(self) -> None:
        """Keep ``window`` spans in flight, reading compressed bytes as they need."""
        spans = self._spans
        while len(self._pending) < self._window and self._next < len(spans):
            i = self._next
            start, end = spans.cstart[i], spans.cend[i]
            if i == 0 and self._gzip:
                header = self._source.take(start)
                if zran.gzip_header_end(header) != start or spans.checkpoints[0].bits:
                    raise ZtocMismatch(
                        f"{self._name}: the gzip header does not end where the zTOC's "
                        f"first checkpoint is (byte {start})"
                    )
            overlap = self._source.pos - start  # the partial byte shared with span i-1
            if overlap > len(self._prev):
                raise ZtocMismatch(f"{self._name}: zTOC spans {i - 1} and {i} overlap")
            head = self._prev[len(self._prev) - overlap :] if overlap else None
            # a gzip span goes where libdeflate can edit it in place (zran.spacious)
            into = zran.spacious(end - start) if self._gzip else None
            buf = self._source.take(end - start - overlap, head, into)
            following = spans.checkpoints[i + 1] if self._gzip and i + 1 < len(spans) else None
            # its last bytes, before the task may edit them (and put them back)
            self._prev = bytes(buf[-_SHARED:])
            task = self._pool.submit(
                _verify_and_inflate, self._z, spans, i, buf, following, self._name
            )
            self._pending.append(task)
            self._next += 1
        if self._next == len(spans) and not self._pending:
            self._source.drain()


class _Source:
    """The compressed stream, copied straight from its chunks into span buffers."""

    def __init__(self, raw: IO[bytes], on_bytes: OnBytes | None, name: str, size: int) -> None:
        self._raw = raw
        self._on_bytes = on_bytes
        self._name = name
        self._size = size
        self._view = memoryview(b"")  # what is left of the chunk read last
        self.pos = 0  # bytes of the stream taken so far

    def _chunk(self) -> bool:
        read_view = getattr(self._raw, "read_view", None)
        data = read_view(1 << 30) if read_view is not None else self._raw.read(READ)
        if not data:
            return False
        self._view = memoryview(data).cast("B")
        if self._on_bytes is not None:
            self._on_bytes(self._view)
        return True

    def take(
        self, n: int, head: bytes | None = None, into: memoryview | None = None
    ) -> bytes | memoryview:
        """The next ``n`` bytes of the stream (after ``head``, if given) as one
        buffer: the chunks' pieces joined, one copy, no zero-filling first;
        ``into``: joined there (it holds exactly ``head`` and them), and returned."""
        parts: list[bytes | memoryview] = [head] if head is not None else []
        while n:
            if not self._view and not self._chunk():
                raise BlobSizeMismatch(
                    f"{self._name}: the blob ends at {self.pos} bytes, its zTOC says {self._size}"
                )
            piece = self._view[:n]
            self._view = self._view[len(piece) :]
            parts.append(piece)
            n -= len(piece)
            self.pos += len(piece)
        if into is None:
            return b"".join(parts)
        at = 0
        for part in parts:
            into[at : at + len(part)] = part
            at += len(part)
        if at != len(into):
            raise ValueError(f"{len(into)}-byte buffer for a {at}-byte span")
        return into

    def drain(self, *, check: bool = True) -> None:
        """Read to the end: the blob must be exactly as long as the zTOC says
        (and whoever hashes it must see every byte)."""
        extra = len(self._view)
        self._view = memoryview(b"")
        while self._chunk():
            extra += len(self._view)
            self._view = memoryview(b"")
        total, self.pos = self.pos + extra, self.pos + extra
        if check and total != self._size:
            raise BlobSizeMismatch(
                f"{self._name}: the blob is {total} bytes long, its zTOC says {self._size}"
            )


def _verify_and_inflate(
    z: ztoc.Ztoc,
    spans: ztoc.Spans,
    i: int,
    data: bytes | memoryview,
    following: zran.Checkpoint | None,
    name: str,
) -> bytearray | bytes:
    """Pool task: span ``i`` decoded from its compressed bytes, once they hash to
    its digest, checked to end at the ``following`` checkpoint (if any)."""
    check_span(z, spans, i, data, name)
    if z.compression == ztoc.UNCOMPRESSED:
        return data if isinstance(data, bytes) else bytes(data)  # (only gzip is spacious)
    size = spans.uend[i] - spans.ustart[i]
    try:
        last = i + 1 == len(spans)
        out, made = zran.inflate_span(
            spans.checkpoints[i], data, size, end=following, to_end=last, in_place=True
        )
    except CorruptLayer as exc:
        raise ZtocMismatch(f"{name}: span {i}: {exc.message}") from exc
    if made != size:
        raise ZtocMismatch(f"{name}: span {i} inflates to {made} bytes, not {size}")
    return out
