"""One sequential pass over a gzip layer, its spans inflated in parallel (SOCI).

A plain gzip pass runs on one core: each byte's meaning depends on the bytes
before it. A zTOC breaks the stream into spans that can each be resumed from
a checkpoint, so a reader of the *whole* layer (``extract``) can read the
compressed stream once, in order, cut it into spans as it arrives, and
inflate several at once on a thread pool (libz through ctypes drops the GIL),
handing the decoded spans on in order.

``SpanInflater(raw, z, spans, pool=...)`` is a read-only file of the layer's
uncompressed tar, the drop-in for ``Codec.inflate(raw)``. Each span's sha256
is checked against the zTOC before it is inflated (``SpanDigestMismatch``);
``raw`` is read to its end, so a ``HashingReader`` under it still checks the
whole blob's digest. At most ``window`` spans are in flight (about
``window`` × 2 × span size of memory).
"""

from __future__ import annotations

import io
import os
from collections import deque
from concurrent.futures import Executor, Future
from typing import IO

from r8imfs.engine.codecs import ztoc
from r8imfs.engine.codecs.socireader import verify_and_inflate
from r8imfs.errors import CorruptLayer

READ = 1024 * 1024


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
    ) -> None:
        super().__init__()
        self._raw = raw
        self._z = z
        self._spans = spans
        self._pool = pool
        self._window = max(1, window or default_window())
        self._name = name
        self._held = bytearray()  # compressed bytes from offset _held_start on
        self._held_start = 0
        self._read_to = 0  # compressed bytes read from raw so far
        self._next = 0  # next span to submit
        self._pending: deque[Future[bytes]] = deque()
        self._out = b""  # the decoded span being handed on, from _pos
        self._pos = 0

    def readable(self) -> bool:
        return True

    def _current(self) -> bool:
        """A decoded span with bytes left to hand on; False at the end."""
        while self._pos >= len(self._out):
            self._submit()
            if not self._pending:
                return False
            self._out, self._pos = self._pending.popleft().result(), 0
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if not self._current():
            return 0
        n = min(len(buffer), len(self._out) - self._pos)
        memoryview(buffer).cast("B")[:n] = memoryview(self._out)[self._pos : self._pos + n]
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        """At most the rest of one decoded span (or ``size``); a whole span is
        handed on as it is, without a copy."""
        if not self._current():
            return b""
        left = len(self._out) - self._pos
        n = left if size is None or size < 0 else min(size, left)
        data = self._out[self._pos : self._pos + n]  # the object itself when whole
        self._pos += n
        return data

    def close(self) -> None:
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()
        super().close()

    def _submit(self) -> None:
        """Keep ``window`` spans in flight, reading compressed bytes as they need."""
        spans = self._spans
        while len(self._pending) < self._window and self._next < len(spans):
            i = self._next
            start, end = spans.cstart[i], spans.cend[i]
            self._fill(end)
            piece = bytes(self._held[start - self._held_start : end - self._held_start])
            self._pending.append(
                self._pool.submit(verify_and_inflate, self._z, spans, i, piece, self._name)
            )
            self._next += 1
            keep_from = spans.cstart[i + 1] if i + 1 < len(spans) else end
            del self._held[: keep_from - self._held_start]
            self._held_start = keep_from
        if self._next == len(spans) and not self._pending:
            self._drain()

    def _fill(self, end: int) -> None:
        while self._read_to < end:
            chunk = self._raw.read(min(READ, max(end - self._read_to, READ)))
            if not chunk:
                raise CorruptLayer(
                    f"{self._name}: the blob ends at {self._read_to} bytes, its zTOC "
                    f"says {self._z.compressed_archive_size}"
                )
            self._held += chunk
            self._read_to += len(chunk)

    def _drain(self) -> None:
        """Read ``raw`` to its end: whoever hashes it must see every byte."""
        while self._raw.read(READ):
            pass
