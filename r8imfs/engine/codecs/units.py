"""Independently decodable units of a layer: what the fetch scheduler moves.

A *unit* is a compressed byte range of a blob whose decoding needs nothing
but those bytes (and, for gzip, state recorded in the index): a seekable
zstd frame, a run of plain zstd frames between two restart points, a gzip
span between two zran checkpoints, later a TOC chunk. Its output lands at a
known offset of the uncompressed tar. ``UnitTable`` lists a layer's units in
order; ``fetchplan.UnitReader`` fetches ranges of them from the registry and
decodes them on worker threads, many at once.

A decoder is a plain function ``decode(unit, data) -> bytes``: ``data`` is
exactly the unit's compressed bytes, the result exactly ``unit.usize`` bytes
(else ``CorruptLayer``). It runs in a worker thread, must be thread-safe and
should release the GIL (zstandard does; zlib-ng does). It never calls back
into trio.

Per format:

* seekable zstd: ``frame_units(frames, data_end)`` over the ``FrameTable``
  read from the seek table; ``decode_zstd``.
* plain zstd: the same table; its restart points are frame starts at least
  1 MiB apart, so a unit is a run of whole frames (``decode_zstd`` decodes
  across frames and skips skippable ones).
* gzip: ``span_units(points, blob_size, usize)`` over zran checkpoints
  (``zran_checkpoints`` reads them from the index the layer already has);
  each unit carries its checkpoint (``Unit.state``: bit offset and 32 KiB
  window) and is decoded by a ``SpanInflater`` (the ``inflatePrime`` binding
  is ``zran.inflate_from``, adapted by ``zran_inflate``), wrapped by
  ``span_decoder``. An index built here also holds each span's sha256
  (``SpanDigest``, taken while the whole blob was read and verified): its
  units then carry them, and the decoder checks a span before inflating it.
* plain tar: ``fixed_units(size, chunk)``, stored bytes cut in equal
  chunks (no decoder): the scheduler's window, priority and coalescing
  still apply.

*Verified* tables (``UnitTable.verified``): every unit's decoder checks its
bytes against a digest it was given (a TOC chunk's, a zTOC span's, a span
digest of the local gzip index), so a wrong byte is an error, never output.
Their bytes need no copy in the blob cache to be trusted: a sequential
reader's read-ahead fetches them uncached (``image._attach_units``). Other
tables rely on the blob cache's hashes. A seekable zstd layer indexed here
gets no digests: it is indexed from its seek table and tar headers without
reading all its frames, and hashing them would be that whole read (its
frames' XXH64 checksums catch damage, not a substitution).
"""

from __future__ import annotations

import bisect
import hashlib
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import zstandard

from r8imfs.engine.codecs import zran
from r8imfs.engine.codecs.zstdindex import FrameTable
from r8imfs.engine.readat import ReadAt
from r8imfs.errors import CorruptLayer, DigestMismatch
from r8imfs.oci.mediatypes import Compression


@dataclass(frozen=True, slots=True)
class SpanState:
    """Where a gzip span starts: bits of its first byte already used, and the
    window; and how many bits of its last byte are the next span's if a
    block starts there (None for the last span): what libdeflate needs
    (``zran.inflate_from``'s ``end_hint``)."""

    bits: int
    window: bytes
    end_bits: int | None = None


@dataclass(frozen=True, slots=True)
class Unit:
    """One independently decodable piece: ``[cstart, cend)`` of the blob → ``usize`` bytes."""

    index: int
    cstart: int
    cend: int
    ustart: int
    usize: int
    state: SpanState | None = None
    #: "sha256:<hex>" of the compressed bytes, checked before decoding (gzip spans)
    digest: str | None = None

    @property
    def csize(self) -> int:
        return self.cend - self.cstart

    @property
    def uend(self) -> int:
        return self.ustart + self.usize


#: ``decode(unit, data)``: ``data`` is bytes or a memoryview of the fetched range.
#: A unit's decoded bytes: a decoder may hand over the buffer it decoded into.
Decoded = bytes | bytearray
Decoder = Callable[[Unit, bytes | memoryview], Decoded]


class UnitTable:
    """A layer's units in order; ``locate`` maps an uncompressed offset to a unit.

    ``verified``: its decoder checks every unit against a digest (see above).
    ``compression``: how its units are compressed, the key of their codec in
    ``table.CODECS`` (which says how much a reader fetches at once).
    """

    def __init__(
        self,
        units: Sequence[Unit],
        uncompressed_size: int,
        *,
        verified: bool = False,
        compression: Compression = Compression.NONE,
    ) -> None:
        try:
            self.compression = Compression(compression)
        except ValueError:
            why = f"unit table: {compression!r} is no layer codec's compression"
            raise ValueError(why) from None
        self._units = tuple(units)
        self._ustarts = [u.ustart for u in self._units]
        self.uncompressed_size = uncompressed_size
        self.verified = verified
        for i, u in enumerate(self._units):
            if u.index != i or u.cend < u.cstart or u.usize < 0:
                raise CorruptLayer(f"unit table: unit {i} is malformed")
            prev = self._units[i - 1] if i else None  # gzip spans share one byte
            if prev is not None and (u.ustart != prev.uend or u.cstart < prev.cend - 1):
                raise CorruptLayer(f"unit table: unit {i} does not follow unit {i - 1}")
        if self._units and self._units[-1].uend != uncompressed_size:
            raise CorruptLayer("unit table does not cover the layer")
        if (self._units[0].ustart if self._units else uncompressed_size) != 0:
            raise CorruptLayer("unit table does not start at the layer's start")

    def __len__(self) -> int:
        return len(self._units)

    def __getitem__(self, i: int) -> Unit:
        return self._units[i]

    def __iter__(self) -> Iterator[Unit]:
        return iter(self._units)

    def locate(self, offset: int) -> int:
        """Index of the unit holding uncompressed ``offset`` (clamped to the table)."""
        return max(0, min(len(self._units) - 1, bisect.bisect_right(self._ustarts, offset) - 1))

    def covering(self, offset: int, end: int) -> range:
        """Indexes of the units that hold ``[offset, end)``."""
        if offset >= end or not self._units:
            return range(0)
        return range(self.locate(offset), self.locate(end - 1) + 1)


def fixed_units(size: int, chunk: int) -> UnitTable:
    """Units of stored bytes (a plain tar): ``chunk`` bytes each, the last one shorter."""
    starts = range(0, size, chunk)
    units = [
        Unit(i, s, min(s + chunk, size), s, min(chunk, size - s)) for i, s in enumerate(starts)
    ]
    return UnitTable(units, size)


def frame_units(frames: FrameTable, data_end: int) -> UnitTable:
    """Units of a zstd layer: one per restart point, up to the next (or ``data_end``).

    ``data_end`` is where frame data ends: the start of the seek table's
    skippable frame for the seekable format, the blob size otherwise.
    """
    n = len(frames.cstarts)
    units = []
    for i in range(n):
        cend = frames.cstarts[i + 1] if i + 1 < n else data_end
        uend = frames.ustarts[i + 1] if i + 1 < n else frames.uncompressed_size
        units.append(Unit(i, frames.cstarts[i], cend, frames.ustarts[i], uend - frames.ustarts[i]))
    return UnitTable(units, frames.uncompressed_size, compression=Compression.ZSTD)


def seekable_data_end(readat: ReadAt, size: int | None = None) -> int:
    """Where a seekable zstd blob's frames end: the start of its seek-table frame.

    Call only on a blob ``read_seek_table`` accepted (it checked the footer).
    """
    size = readat.size if size is None else size
    count, descriptor, _ = struct.unpack("<IBI", readat.read_at(size - 9, 9))
    width = 12 if descriptor & 0x80 else 8
    return int(size - (8 + int(count) * width + 9))


_local = threading.local()


def thread_dctx() -> zstandard.ZstdDecompressor:
    """One decompression context per thread: zstandard's are not thread-safe."""
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def decode_zstd(unit: Unit, data: bytes | memoryview) -> bytes:
    """Decode a zstd unit: one frame (fast path) or several, skippable ones skipped.

    zstandard releases the GIL while it decodes, so units decode in parallel.
    """
    if len(data) != unit.csize:
        raise CorruptLayer(f"zstd unit {unit.index}: got {len(data)} of {unit.csize} bytes")
    dctx = thread_dctx()
    try:
        if zstandard.frame_content_size(data) == unit.usize and unit.usize > 0:
            out = dctx.decompress(data, max_output_size=unit.usize)
        else:
            out = _decode_frames(dctx, data)
    except zstandard.ZstdError as exc:
        raise CorruptLayer(f"zstd unit {unit.index} does not decompress: {exc}") from exc
    if len(out) != unit.usize:
        raise CorruptLayer(f"zstd unit {unit.index} decodes to {len(out)} bytes, not {unit.usize}")
    return out


def _decode_frames(dctx: zstandard.ZstdDecompressor, data: bytes | memoryview) -> bytes:
    parts = []
    rest = data
    while rest:
        obj = dctx.decompressobj()
        parts.append(obj.decompress(rest))
        if not obj.eof:
            raise CorruptLayer("zstd unit ends inside a frame")
        rest = obj.unused_data
    return b"".join(parts)


# -- span digests -----------------------------------------------------------------


class SpanDigestMismatch(DigestMismatch):
    """A span's compressed bytes do not hash to the digest its index gives it
    (a zTOC's, or the local gzip index's)."""


def check_span(data: bytes | memoryview, want: str, where: str, source: str) -> None:
    """``SpanDigestMismatch`` unless ``data`` hashes to ``want`` ("sha256:<hex>").

    The one span check: SOCI spans (``socireader``) and gzip spans of a
    local index (``span_decoder``). ``where`` names the span, ``source``
    who gave the digest, for the message.
    """
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != want:
        raise SpanDigestMismatch(f"{where} hashes to {got}, {source} says {want}")


@dataclass(frozen=True, slots=True)
class SpanDigest:
    """sha256 of a blob's compressed bytes ``[cstart, cend)``: one unit's, as
    ``span_units`` cuts them (the range is kept to check exactly that)."""

    cstart: int
    cend: int
    digest: str


# -- gzip spans -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A zran seek point: compressed byte offset (of the byte holding the next
    bit), uncompressed offset, bits of that byte already consumed, and the 32
    KiB of output before it (empty at the stream start)."""

    coffset: int
    uoffset: int
    bits: int
    window: bytes


class SpanInflater(Protocol):
    """Raw-deflate from mid-stream: prime ``bits`` bits, set the window, inflate.

    ``data`` starts with the byte holding the first bit of the span; the
    result is exactly ``usize`` bytes of output. With ``end_bits``, ``data``
    ends with the byte holding the next span's first bit, ``end_bits`` of
    its bits the next span's, if the next span starts at a block boundary;
    without, more input may remain. Implemented by ``zran`` (``zran_inflate``).
    """

    def __call__(
        self,
        data: bytes | memoryview,
        bits: int,
        window: bytes,
        usize: int,
        end_bits: int | None = None,
    ) -> bytes | bytearray: ...


_ZRAN_HEAD = struct.Struct("<5sBBQQIII")  # id, version, flags, csize, usize, spacing, window, n
_ZRAN_POINT_V0 = struct.Struct("<QQB")  # coffset, uoffset, bits
_ZRAN_POINT_V1 = struct.Struct("<QQBB")  # ... and whether a window follows


def zran_checkpoints(index_bytes: bytes) -> list[Checkpoint]:
    """The seek points of an exported zran index (the gzip layer's cached index).

    Layout (indexed_gzip's ``zran_export_index``, little-endian): a header,
    then per point its compressed offset, uncompressed offset, bits and (from
    version 1) a flag saying whether it has a window, then the windows of
    the points that have one, in order. Version 0 gave every point but the
    first a window.
    """
    try:
        ident, version, _, _, _, _, wsize, count = _ZRAN_HEAD.unpack_from(index_bytes)
        point = _ZRAN_POINT_V1 if version >= 1 else _ZRAN_POINT_V0
        raw = [
            point.unpack_from(index_bytes, _ZRAN_HEAD.size + i * point.size) for i in range(count)
        ]
    except struct.error as exc:
        raise CorruptLayer("gzip checkpoint index is truncated") from exc
    if ident != b"GZIDX":
        raise CorruptLayer("gzip checkpoint index has a bad header")
    pos = _ZRAN_HEAD.size + count * point.size
    points = []
    for i, fields in enumerate(raw):
        has_window = bool(fields[3]) if version >= 1 else i > 0
        window = b""
        if has_window:
            window = index_bytes[pos : pos + wsize]
            if len(window) != wsize:
                raise CorruptLayer("gzip checkpoint index is truncated")
            pos += wsize
        points.append(Checkpoint(fields[0], fields[1], fields[2], window))
    return points


def span_units(
    points: Sequence[Checkpoint],
    blob_size: int,
    usize: int,
    digests: Sequence[SpanDigest] = (),
) -> UnitTable:
    """Units of a gzip layer: from each checkpoint to the next (the last to the end).

    A span's compressed range runs to the byte holding the next span's first
    bit (inclusive), so it holds every bit the span's deflate blocks use. The
    first span starts at the gzip header (``coffset`` 0 with no window).

    ``digests``, one per span over exactly these ranges (else ignored: the
    table is then not verified), go on the units for ``span_decoder``.
    """
    units = []
    for i, p in enumerate(points):
        nxt = points[i + 1] if i + 1 < len(points) else None
        cstart = p.coffset - (1 if p.bits else 0)
        cend = nxt.coffset if nxt is not None else blob_size
        uend = nxt.uoffset if nxt is not None else usize
        state = SpanState(p.bits, p.window, None if nxt is None else nxt.bits)
        units.append(Unit(i, cstart, cend, p.uoffset, uend - p.uoffset, state))
    if not _digests_fit(units, digests):
        return UnitTable(units, usize, compression=Compression.GZIP)
    signed = [replace(u, digest=d.digest) for u, d in zip(units, digests, strict=True)]
    return UnitTable(signed, usize, verified=True, compression=Compression.GZIP)


def _digests_fit(units: Sequence[Unit], digests: Sequence[SpanDigest]) -> bool:
    return len(digests) == len(units) > 0 and all(
        (u.cstart, u.cend) == (d.cstart, d.cend) for u, d in zip(units, digests, strict=True)
    )


def zran_inflate(
    data: bytes | memoryview, bits: int, window: bytes, usize: int, end_bits: int | None = None
) -> bytes | bytearray:
    """A ``SpanInflater`` over ``zran.inflate_from`` (libdeflate, ISA-L or libz).

    indexed_gzip's points are zlib zran.c's: the first one sits just after
    the gzip header with no window (a raw inflate starts there as is), and
    a point with ``bits`` resumes in the byte before its ``coffset``, which
    is where a span's data begins (``span_units``). Offsets here are
    relative to ``data``.
    """
    cp = zran.Checkpoint(1 if bits else 0, 0, bits, window)
    end = None if end_bits is None else zran.Checkpoint(len(data), usize, end_bits, b"")
    return zran.inflate_from(cp, data, 0, usize, end_hint=end)


def span_decoder(inflate: SpanInflater) -> Decoder:
    """A ``Decoder`` for gzip span units over a ``SpanInflater``."""

    def decode(unit: Unit, data: bytes | memoryview) -> bytes | bytearray:
        if unit.state is None:
            raise CorruptLayer(f"gzip unit {unit.index} has no checkpoint")
        if unit.digest is not None:  # before a byte is inflated
            where = f"gzip span {unit.index} (compressed bytes {unit.cstart}-{unit.cend})"
            check_span(data, unit.digest, where, "the layer's index")
        state = unit.state
        out = inflate(data, state.bits, state.window, unit.usize, state.end_bits)
        if len(out) != unit.usize:
            raise CorruptLayer(f"gzip span {unit.index} inflates to {len(out)}, not {unit.usize}")
        return out

    return decode


# -- a layer's units from its index ---------------------------------------------

#: Stored bytes per unit of a plain tar. No decode cost, so small: a random
#: read fetches the few units it covers (the kernel's mmap read-around,
#: ``fs.daemon.READ_AHEAD_KB``, spans at most three), while sequential reads
#: still go out as GETs of up to ``max_range``, the units coalesced. 256 KiB
#: cost about 10-15% more daemon CPU than 1 MiB copying a 512 MiB file from a
#: warm blob cache (0.88-0.92 s vs 0.78-0.79 s, A/B at load 5-9) and nothing
#: visible on a cold copy (2.8-3.2 s either way, the GETs and hashing).
PLAIN_CHUNK = 256 * 1024


def units_for_layer(
    compression: str,
    checkpoints: bytes,
    compressed_size: int,
    uncompressed_size: int,
    *,
    span_inflater: SpanInflater | None = None,
    digests: Sequence[SpanDigest] = (),
) -> tuple[UnitTable, Decoder | None] | None:
    """A layer's units and their decoder, from what its index holds; None if it has none.

    ``compression`` and ``checkpoints`` are ``indexdb.LayerIndex``'s: a zstd
    frame table, a zran index, or nothing. zstd: the last unit runs to the
    blob's end, so a seekable blob's seek table rides along with the last
    frame (skipped by the decoder) and no footer read is needed. gzip needs
    ``span_inflater`` (``zran_inflate``); without it, None; its ``digests``
    (``LayerIndex.span_digests``) make the table verified. A layer read
    from a decoded copy (no checkpoints) has no units.
    """
    if compression == "none":
        return fixed_units(uncompressed_size, PLAIN_CHUNK), None
    if not checkpoints:
        return None
    if compression == "zstd":
        return frame_units(FrameTable.from_bytes(checkpoints), compressed_size), decode_zstd
    if compression == "gzip" and span_inflater is not None:
        points = zran_checkpoints(checkpoints)
        if not points or points[0].uoffset != 0:
            return None  # (no block boundary zran would stop at: stored blocks, a tiny layer)
        units = span_units(points, compressed_size, uncompressed_size, digests)
        return units, span_decoder(span_inflater)
    return None
