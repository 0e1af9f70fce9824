"""Random access into gzip layers through zran checkpoints (indexed_gzip).

Theory of operation
-------------------
Deflate cannot start mid-stream: decoding offset X needs the 32 KiB of output
before X. zran (indexed_gzip's C core, after zlib's ``zran.c``) records a seek
point every ``spacing`` bytes of output: the compressed bit position plus that
32 KiB window. A read then inflates from the nearest point before the offset,
on average ``spacing / 2`` bytes of waste. The points are serialised with
``export_index`` and kept in the layer's index database (``indexdb``).

One pass over the blob builds both indexes: ``zran.CheckpointBuilder`` (libz
or zlib-ng through ctypes; zlib's zran rule, the same points indexed_gzip
makes) takes a point at the first block boundary past every ``spacing``
bytes of output and hashes each span's compressed bytes as they go by, and
the uncompressed bytes feed ``tarindex.index_stream``. The points are
written in indexed_gzip's export format (``_export``: what ``GzipLayerReader``
imports and ``units.zran_checkpoints`` reads), with indexed_gzip's point at
the stream's end; the digests, one per ``units.span_units`` unit over exactly
its range, make the layer's units self-verifying (``units.SpanDigest``). The
blob is read whole by this pass and its sha256 checked by whoever serves it
(the blob cache), so the digests are of the layer's own bytes. A stream the
builder refuses (bytes after the last member, say) is indexed again by
``IndexedGzipFile`` with ``auto_build``, as before, without digests: zran
inflates each raw read from its last point, so its reads go through a buffer
of ``4 * spacing`` (the indexed_gzip #89 trap: with a buffer near the
spacing, sequential reads crawl).

Spacing: 4 MiB by measurement (docs/engine-measurements.md): the index is
about 0.8% of the uncompressed layer and a random 64 KiB read costs 6-8 ms.
SOCI's zTOC chose the same spacing.

Reads: ``GzipLayerReader`` keeps a small pool of zran handles, each over its
own ``BlobFile`` (a zran handle has a cursor and is not thread-safe) and its
own decoded buffer. A read goes to the handle whose buffer holds or ends at
the offset, so a sequential reader keeps hitting one handle whose read-ahead
doubles up to ``MAX_READAHEAD``; random reads decode just what they ask for.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from r8imfs._units import MiB
from r8imfs.engine.codecs.units import SpanDigest, span_units, zran_checkpoints
from r8imfs.engine.codecs.zran import Checkpoint as Point
from r8imfs.engine.codecs.zran import CheckpointBuilder
from r8imfs.engine.entry import Entry
from r8imfs.engine.readat import BlobFile, ReadAt, ScanProgress
from r8imfs.engine.tarindex import index_stream
from r8imfs.errors import CorruptLayer, R8imfsError

DEFAULT_SPACING = 4 * MiB
WINDOW_SIZE = 32 * 1024
MIN_READ = 128 * 1024
MAX_READAHEAD = 8 * MiB
#: Compressed bytes zran asks its file for at a time. Over the blob cache every
#: such read is a round trip through the trio loop, so 4 MiB (one cache block)
#: rather than 1 MiB: a sequential copy out of a mount ran ~1.4x faster, and a
#: random 64 KiB read costs ~0.5 ms more (docs/benchmarks.md, issue 4).
READ_BUF = 4 * MiB
DEFAULT_POOL = 3
#: compressed bytes per ``CheckpointBuilder.feed``: at most ~64 MiB of output at once
FEED = 64 * 1024
_HEADER = struct.Struct("<5sBBQQIII")  # zran export: id, version, flags, csize, usize, ...
_POINT = struct.Struct("<QQBB")  # zran export v1: coffset, uoffset, bits, has a window
log = logging.getLogger("r8imfs.engine")


@dataclass(frozen=True, slots=True)
class GzipIndex:
    entries: list[Entry]
    index_bytes: bytes
    uncompressed_size: int
    #: one per unit of ``units.span_units`` over ``index_bytes``'s points; () if none
    span_digests: tuple[SpanDigest, ...] = ()


def build_gzip_index(
    readat: ReadAt,
    *,
    spacing: int = DEFAULT_SPACING,
    size: int | None = None,
    progress: ScanProgress | None = None,
) -> GzipIndex:
    """Inflate the layer once; return its tar entries, zran checkpoints and span digests."""
    refused: list[CorruptLayer] = []
    try:
        return _build_hashed(readat, spacing, size, progress, refused)
    except CorruptLayer:
        if not refused:
            raise  # not the stream: the tar in it
    log.info("gzip index: %s; indexing with indexed_gzip", refused[0].message)
    return _build_zran(readat, spacing, size, progress)


def _build_hashed(
    readat: ReadAt,
    spacing: int,
    size: int | None,
    progress: ScanProgress | None,
    refused: list[CorruptLayer],
) -> GzipIndex:
    """``build_gzip_index`` by ``CheckpointBuilder``; a stream it refuses goes in ``refused``."""
    blob = BlobFile(readat, size=size, progress=progress, buffer_size=MiB)
    builder = CheckpointBuilder(spacing)
    tail = [b""]  # the last output, for the window of the point at the end

    def output() -> Iterator[bytes]:
        try:
            while chunk := blob.read(READ_BUF):
                for piece in _feed(builder, chunk):
                    tail[0] = (
                        piece if len(piece) >= WINDOW_SIZE else (tail[0] + piece)[-WINDOW_SIZE:]
                    )
                    yield piece
            builder.finish()
        except CorruptLayer as exc:
            refused.append(exc)
            raise

    try:
        entries, usize = index_stream(output())
    finally:
        builder.close()
    csize = builder.total_in
    end = Point(csize, usize, 0, tail[0][-WINDOW_SIZE:].rjust(WINDOW_SIZE, b"\0"))
    index_bytes = _export([*builder.checkpoints, end], csize, usize, spacing)
    digests = [*builder.span_digests, "sha256:" + hashlib.sha256().hexdigest()]  # end: empty
    table = span_units(zran_checkpoints(index_bytes), csize, usize)
    if len(table) != len(digests):
        raise CorruptLayer(f"gzip index: {len(table)} spans but {len(digests)} span digests")
    spans = tuple(SpanDigest(u.cstart, u.cend, d) for u, d in zip(table, digests, strict=True))
    return GzipIndex(entries, index_bytes, usize, spans)


def _feed(builder: CheckpointBuilder, chunk: bytes) -> Iterator[bytes]:
    """What ``chunk`` inflates to, fed ``FEED`` bytes at a time: ``feed`` returns all
    of a piece's output at once, and deflate inflates up to ~1000x (zeros)."""
    for at in range(0, len(chunk), FEED):
        yield from builder.feed(chunk[at : at + FEED])


def _export(points: list[Point], csize: int, usize: int, spacing: int) -> bytes:
    """``points`` in indexed_gzip's ``zran_export_index`` format (version 1): the
    header, each point's offsets, bits and whether a window follows (not for the
    first point, at the stream's start), then the windows in order."""
    head = _HEADER.pack(b"GZIDX", 1, 0, csize, usize, spacing, WINDOW_SIZE, len(points))
    has_window = [p.out > 0 for p in points]
    offsets = [
        _POINT.pack(p.cin, p.out, p.bits, w) for p, w in zip(points, has_window, strict=True)
    ]
    windows = [p.window for p, w in zip(points, has_window, strict=True) if w]
    return b"".join([head, *offsets, *windows])


def _build_zran(
    readat: ReadAt, spacing: int, size: int | None, progress: ScanProgress | None
) -> GzipIndex:
    """``build_gzip_index`` by indexed_gzip: checkpoints, no span digests."""
    blob = BlobFile(readat, size=size, progress=progress, buffer_size=MiB)
    with _zran_errors(), _open(blob, spacing, buffer_size=4 * spacing) as igz:
        chunks: Iterator[bytes] = iter(partial(igz.read, MiB), b"")
        entries, usize = index_stream(chunks)
        out = io.BytesIO()
        igz.export_index(fileobj=out)
    return GzipIndex(entries, out.getvalue(), usize)


def index_uncompressed_size(index_bytes: bytes) -> int:
    """The uncompressed size recorded in an exported zran index."""
    try:
        ident, _ver, _flags, _csize, usize, *_ = _HEADER.unpack_from(index_bytes)
    except struct.error as exc:
        raise CorruptLayer("gzip checkpoint index is truncated") from exc
    if ident != b"GZIDX":
        raise CorruptLayer("gzip checkpoint index has a bad header")
    return int(usize)


# indexed_gzip is imported where it is used (here and in ``_zran_errors``), not
# at the top: importing it costs ~20 ms (it loads importlib.metadata and
# pickle), and the codec table imports this module for every command, most of
# which never read a gzip layer at random (``extract`` streams it).


def _open(blob: BlobFile, spacing: int, *, buffer_size: int) -> Any:
    import indexed_gzip

    return indexed_gzip.IndexedGzipFile(
        fileobj=blob,
        spacing=spacing,
        window_size=WINDOW_SIZE,
        readbuf_size=READ_BUF,
        buffer_size=buffer_size,
    )


@contextlib.contextmanager
def _zran_errors() -> Iterator[None]:
    """Translate indexed_gzip/zlib failures into CorruptLayer.

    zran wraps an exception raised by our ``ReadAt`` (say a TransportError from
    the blob cache) as the cause of a ZranError: that original is re-raised.
    """
    from indexed_gzip.indexed_gzip import CrcError, NotCoveredError, ZranError

    try:
        yield
    except (ZranError, CrcError, NotCoveredError) as exc:
        cause = exc.__cause__
        if isinstance(cause, R8imfsError):
            raise cause from None
        raise CorruptLayer(f"gzip layer does not decompress: {exc}") from exc


class _Handle:
    """One zran decoder with its own cursor and decoded buffer."""

    def __init__(self, readat: ReadAt, index_bytes: bytes, spacing: int) -> None:
        self._blob = BlobFile(readat)
        # The BufferedReader wrapper's buffer would re-inflate on every refill;
        # we buffer ourselves and talk to the raw zran file.
        self._file = _open(self._blob, spacing, buffer_size=4096)
        self._file.import_index(fileobj=io.BytesIO(index_bytes))
        self._raw = self._file.raw
        self.buf = b""
        self.start = 0
        self.ahead = MIN_READ

    @property
    def end(self) -> int:
        return self.start + len(self.buf)

    def affinity(self, offset: int) -> bool:
        return self.start <= offset <= self.end and bool(self.buf)

    def pread(self, offset: int, size: int) -> bytes:
        if self.start <= offset and offset + size <= self.end:
            return self.buf[offset - self.start : offset - self.start + size]
        head = b""
        if self.affinity(offset):  # sequential: keep what we have, read further ahead
            head = self.buf[offset - self.start :]
            size -= len(head)
            offset = self.end
            self.ahead = min(2 * self.ahead, MAX_READAHEAD)
        else:
            self.ahead = MIN_READ
        self._raw.seek(offset)
        self.buf = self._raw.read(max(size, self.ahead))
        self.start = offset
        return head + self.buf[:size]

    def close(self) -> None:
        self._file.close()
        self._blob.close()


class GzipLayerReader:
    """``pread`` on uncompressed offsets of a gzip layer; thread-safe."""

    def __init__(
        self,
        readat: ReadAt,
        index_bytes: bytes,
        size: int | None = None,
        *,
        pool_size: int = DEFAULT_POOL,
    ) -> None:
        self._readat = readat
        self._index = index_bytes
        self._size = index_uncompressed_size(index_bytes) if size is None else size
        self._spacing = _HEADER.unpack_from(index_bytes)[5]
        self._pool_size = pool_size
        self._idle: list[_Handle] = []
        self._count = 0
        self._cond = threading.Condition()
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    def pread(self, offset: int, size: int) -> bytes:
        size = min(size, self._size - offset)
        if size <= 0:
            return b""
        handle = self._acquire(offset)
        try:
            with _zran_errors():
                return handle.pread(offset, size)
        finally:
            self._release(handle)

    read_at = pread

    def cached(self, offset: int, size: int) -> bytes | None:
        """The bytes ``pread`` would return, if an idle handle holds them decoded; else None.

        Only slices a buffer under a short lock: never inflates, never reads
        the blob, so the async side may call it on the trio loop and skip a
        thread round trip. A sequential reader's handle holds up to
        ``MAX_READAHEAD`` decoded bytes, so most reads of a copy hit.
        """
        size = min(size, self._size - offset)
        if size <= 0:
            return b""
        with self._cond:
            for handle in self._idle:
                if handle.start <= offset and offset + size <= handle.end:
                    return handle.buf[offset - handle.start : offset - handle.start + size]
        return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for handle in self._idle:
                handle.close()
            self._idle.clear()

    def __enter__(self) -> GzipLayerReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _acquire(self, offset: int) -> _Handle:
        with self._cond:
            while True:
                if self._closed:
                    raise ValueError("GzipLayerReader is closed")
                for i, handle in enumerate(self._idle):
                    if handle.affinity(offset):
                        return self._idle.pop(i)
                if self._count < self._pool_size:
                    self._count += 1
                    break
                if self._idle:
                    return self._idle.pop(0)  # least recently released
                self._cond.wait()
        try:
            with _zran_errors():
                return _Handle(self._readat, self._index, self._spacing)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _release(self, handle: _Handle) -> None:
        with self._cond:
            if self._closed:
                handle.close()
                return
            self._idle.append(handle)
            self._cond.notify()
