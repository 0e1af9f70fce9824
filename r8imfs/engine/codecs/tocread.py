"""Verified reads of a TOC layer's files: fetch only the chunks needed, check each.

``TocReader`` serves ``pread(offset, size)`` on the virtual stream of a
``TocIndex`` (file bodies back to back; each ``Entry.data_offset`` points into
it), so it is a ``LayerReader`` and ``readat.read_entry`` works unchanged.
A read finds the chunks it overlaps, fetches their compressed ranges (one
``read_at`` per run of adjacent chunks), decodes each (zstd frames, or a gzip
member for eStargz) on a small thread pool (zstandard and zlib release the
GIL), and checks the sha256 of each chunk against the TOC *before* any of its
bytes are returned. A chunk that fails raises ``ChunkMismatch`` (a
``DigestMismatch``) or ``CorruptLayer`` naming the file: never wrong bytes,
and other chunks and files still read. Verified chunks stay in a small LRU
cache, so sequential small reads decode each chunk once.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import io
import itertools
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Self

import zstandard

from r8imfs import _gc
from r8imfs.engine.codecs.toc import Chunk, TocFile, TocIndex, load_toc
from r8imfs.engine.codecs.units import Decoder, Unit, UnitTable, thread_dctx
from r8imfs.engine.readat import ReadAt
from r8imfs.errors import CorruptLayer, DigestMismatch
from r8imfs.oci.mediatypes import Compression

MiB = 1024 * 1024
CACHE_BYTES = 64 * MiB


class ChunkMismatch(DigestMismatch):
    """A chunk whose bytes do not hash to the digest the TOC gives for them."""


class TocReader:
    """Random, verified access to the bodies of one TOC layer (thread-safe)."""

    def __init__(
        self,
        readat: ReadAt,
        index: TocIndex,
        *,
        threads: int = 2,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self._readat = readat
        self.index = index
        self._pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = cache_bytes
        self._lock = threading.Lock()
        self.chunks_verified = 0  # counters, for tests and benchmarks

    @property
    def size(self) -> int:
        return self.index.size

    def pread(self, offset: int, size: int) -> bytes:
        """Bytes of the virtual stream; a read may span several files."""
        parts: list[bytes] = []
        end = min(self.index.size, offset + size)
        while offset < end:
            f = self.index.file_at(offset)
            if f is None:  # cannot happen: bodies tile the virtual stream
                raise CorruptLayer(f"TOC layer has no file at virtual offset {offset}")
            take = min(end, f.start + f.size) - offset
            parts.append(self.read_file(f, offset - f.start, take))
            offset += take
        return b"".join(parts)

    read_at = pread

    def read_file(self, f: TocFile, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of ``f`` from ``offset``, every byte verified."""
        end = min(f.size, offset + size)
        if offset >= end:
            return b""
        offsets = [c.offset for c in f.chunks]
        first = bisect.bisect_right(offsets, offset) - 1
        last = bisect.bisect_left(offsets, end) - 1
        wanted = range(first, last + 1)
        data = self._chunks(f, wanted)
        joined = data[0] if len(data) == 1 else b"".join(data)
        skip = offset - f.chunks[first].offset
        return joined[skip : skip + end - offset]

    def cached(self, offset: int, size: int) -> bytes | None:
        """``pread``'s answer if every chunk it needs is decoded already, else None."""
        f = self.index.file_at(offset)
        if f is None or offset + size > f.start + f.size:
            return None
        key = self._file_key(f)
        offsets = [c.offset for c in f.chunks]
        first = bisect.bisect_right(offsets, offset - f.start) - 1
        last = bisect.bisect_left(offsets, offset - f.start + size) - 1
        with self._lock:
            data = [self._cache.get((key, i)) for i in range(first, last + 1)]
        if any(d is None for d in data):
            return None
        joined = b"".join(d for d in data if d is not None)
        skip = offset - f.start - f.chunks[first].offset
        return joined[skip : skip + size]

    def _file_key(self, f: TocFile) -> int:
        return bisect.bisect_left(self.index.starts, f.start)

    def _chunks(self, f: TocFile, wanted: range) -> list[bytes]:
        key = self._file_key(f)
        with self._lock:
            have = {i: self._cache.get((key, i)) for i in wanted}
            for i, d in have.items():
                if d is not None:
                    self._cache.move_to_end((key, i))
        missing = [i for i, d in have.items() if d is None]
        if missing:
            fresh = self._fetch(f, [f.chunks[i] for i in missing])
            with self._lock:
                for i, d in zip(missing, fresh, strict=True):
                    have[i] = d
                    self._remember((key, i), d)
        return [d for d in have.values() if d is not None]

    def _fetch(self, f: TocFile, chunks: list[Chunk]) -> list[bytes]:
        """Fetch runs of adjacent chunks with one read each; decode and verify."""
        raw: list[bytes] = []
        for run in _runs(chunks):
            blob = self._readat.read_at(run[0].cstart, run[-1].cend - run[0].cstart)
            if len(blob) != run[-1].cend - run[0].cstart:
                raise CorruptLayer(f"TOC layer ends before the data of {f.path!r}")
            raw += [blob[c.cstart - run[0].cstart : c.cend - run[0].cstart] for c in run]
        jobs = list(zip(chunks, raw, strict=True))
        if self._pool is None or len(jobs) == 1:
            return [self._verified(f, c, r) for c, r in jobs]
        return list(self._pool.map(lambda job: self._verified(f, *job), jobs))

    def _verified(self, f: TocFile, chunk: Chunk, raw: bytes) -> bytes:
        where = f"{f.path!r} bytes {chunk.offset}..{chunk.offset + chunk.size}"
        try:
            data = decode(raw, self.index.codec, chunk.inner + chunk.size)[chunk.inner :]
        except CorruptLayer as exc:  # say which file: the user sees this line
            raise CorruptLayer(f"TOC layer: {where}: {exc.message}") from exc
        if len(data) != chunk.size:
            raise CorruptLayer(f"TOC layer: {where} decode to {len(data)} bytes, not {chunk.size}")
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        if got != chunk.digest:
            raise ChunkMismatch(f"TOC layer: {where} hash to {got}, the TOC says {chunk.digest}")
        with self._lock:
            self.chunks_verified += 1
        return data

    def _remember(self, key: tuple[int, int], data: bytes) -> None:
        if len(data) > self._cache_limit // 4:
            return
        self._cache[key] = data
        self._cache_bytes += len(data)
        while self._cache_bytes > self._cache_limit:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= len(old)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _runs(chunks: list[Chunk]) -> Iterator[list[Chunk]]:
    run: list[Chunk] = []
    for c in chunks:
        if run and c.cstart != run[-1].cend:
            yield run
            run = []
        run.append(c)
    if run:
        yield run


def decode(raw: bytes, codec: str, want: int) -> bytes:
    """The first ``want`` bytes ``raw`` decodes to (never more: a hostile chunk
    cannot make us inflate beyond what the TOC promised)."""
    try:
        if codec == "gzip":
            return zlib.decompressobj(wbits=31).decompress(raw, want)
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(raw), read_across_frames=True
        )
        parts: list[bytes] = []
        while want > 0:
            piece = reader.read(want)
            if not piece:
                break
            parts.append(piece)
            want -= len(piece)
        return b"".join(parts)
    except (zlib.error, zstandard.ZstdError) as exc:
        raise CorruptLayer(f"TOC layer chunk does not decompress: {exc}") from exc


def open_toc_reader(
    readat: ReadAt, annotations: Mapping[str, str] | None, *, threads: int = 2
) -> TocReader | None:
    """A verified reader for a TOC layer (its entries in ``.index.entries``), or
    None when the descriptor announces no TOC. Blocking: run it on a worker
    thread. Raises ``BadToc`` for a TOC to refuse: the caller logs it and reads
    the layer as a plain stream instead."""
    index = load_toc(readat, annotations)
    return None if index is None else TocReader(readat, index, threads=threads)


# -- chunks as units, for the parallel fetch scheduler ----------------------------


def chunk_units(index: TocIndex) -> tuple[UnitTable, Decoder] | None:
    """The layer's chunks as ``units.Unit``s over its virtual stream, and a decoder
    that checks each chunk's sha256 before returning a byte of it.

    ``image.fetchplan.UnitReader`` then fetches chunks with ranged GETs (adjacent
    ones coalesced), decodes and verifies them on worker threads in parallel, and
    reads ahead of sequential readers. Chunks that share one compressed member
    (eStargz ``innerOffset``) become one unit whose output is their pieces in
    order. None when the chunks do not lie in the blob in TOC order (a producer
    that reorders them): ``TocReader`` serves such a layer.
    """
    with _gc.paused():  # a unit per chunk, all long-lived (r8imfs._gc)
        return _chunk_units(index)


def _chunk_units(index: TocIndex) -> tuple[UnitTable, Decoder] | None:
    groups: list[tuple[TocFile, list[Chunk]]] = []
    for f in index.files:
        for c in f.chunks:
            last = groups[-1] if groups else None
            if last is not None and c.inner and c.cstart == last[1][0].cstart:
                last[1].append(c)  # c.inner > 0: a later piece of the same member
            else:
                groups.append((f, [c]))
    units, pieces, pos = [], [], 0
    for i, (f, chunks) in enumerate(groups):
        size = sum(c.size for c in chunks)
        cend = max(c.cend for c in chunks)
        units.append(Unit(i, chunks[0].cstart, cend, pos, size))
        pieces.append((f.path, tuple(chunks)))
        pos += size
    try:
        # ``_decode_unit`` checks each
        table = UnitTable(units, index.size, verified=True, compression=Compression(index.codec))
    except CorruptLayer:
        return None
    if any(u.cstart < p.cend for p, u in itertools.pairwise(table)):
        return None  # overlapping compressed ranges: not independently fetchable
    return table, functools.partial(_decode_unit, index.codec, tuple(pieces))


def _decode_unit(
    codec: str,
    pieces: tuple[tuple[str, tuple[Chunk, ...]], ...],
    unit: Unit,
    raw: bytes | memoryview,
) -> bytes:
    path, chunks = pieces[unit.index]
    if len(raw) != unit.csize:
        raise CorruptLayer(f"TOC layer: {path!r}: got {len(raw)} of {unit.csize} bytes")
    want = max(c.inner + c.size for c in chunks)
    data = _decode_fast(raw, codec, want)
    out = []
    for c in chunks:
        where = f"{path!r} bytes {c.offset}..{c.offset + c.size}"
        piece = data[c.inner : c.inner + c.size] if c.inner or len(data) != c.size else data
        if len(piece) != c.size:
            raise CorruptLayer(f"TOC layer: {where} decode to {len(piece)} bytes, not {c.size}")
        got = "sha256:" + hashlib.sha256(piece).hexdigest()
        if got != c.digest:
            raise ChunkMismatch(f"TOC layer: {where} hash to {got}, the TOC says {c.digest}")
        out.append(piece)
    return out[0] if len(out) == 1 else b"".join(out)


def _decode_fast(raw: bytes | memoryview, codec: str, want: int) -> bytes:
    """``decode``, with one call for the common case: a zstd frame that says its size."""
    if codec == "zstd" and want > 0:
        try:
            if zstandard.frame_content_size(raw) == want:
                return thread_dctx().decompress(raw, max_output_size=want)
        except zstandard.ZstdError as exc:
            raise CorruptLayer(f"TOC layer chunk does not decompress: {exc}") from exc
    return decode(bytes(raw), codec, want)
