"""Write zstd layers in the seekable format (independent frames + seek table).

Each ``frame_size`` slice of the input becomes one zstd frame with its content
size and checksum; a trailing skippable frame holds the seek table (layout in
``zstdindex``). Ordinary decoders (``zstd -d``, containerd) skip that frame, so
the result is a valid ``tar+zstd`` layer that r8imfs can read at random. The
seek table's per-frame checksum is defined as the low 32 bits of XXH64 of the
frame's content, which is exactly the frame's own trailing content checksum,
so it is copied rather than recomputed.

Frames compress independently, so ``threads`` workers compress slices in
parallel (zstandard releases the GIL) while the output stays in order.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

import zstandard

from r8imfs._units import MiB
from r8imfs.engine.codecs import tocformat as tf
from r8imfs.engine.codecs.chunkedwrite import Piece, TarCutter, read_full
from r8imfs.engine.codecs.zstdindex import SEEKABLE_FOOTER, SEEKABLE_SKIPPABLE

MAX_FRAME_SIZE = 1 << 30  # sizes are u32 in the table; stay far below


@dataclass(frozen=True, slots=True)
class SeekableResult:
    compressed_size: int
    compressed_digest: str | None  # "sha256:<hex>" of everything written, if asked
    uncompressed_size: int
    diff_id: str  # "sha256:<hex>" of the input
    frames: int
    #: Layer-descriptor annotations (zstd:chunked TOC position and checksum);
    #: empty for plain seekable output.
    annotations: dict[str, str] = field(default_factory=dict)


def write_seekable(
    src: IO[bytes],
    dst: IO[bytes],
    *,
    level: int = 3,
    frame_size: int = 4 * MiB,
    threads: int = 0,
    digest_output: bool = True,
) -> SeekableResult:
    """Compress ``src`` into ``dst`` as seekable zstd; ``threads=0``: up to 4.

    ``digest_output=False`` leaves ``compressed_digest`` None, for a caller
    that hashes the output anyway (an upload does): a 1 GiB sha256 less on
    this thread, which is the recompression's critical path.
    """
    if not 0 < frame_size <= MAX_FRAME_SIZE:
        raise ValueError(f"frame_size must be in 1..{MAX_FRAME_SIZE}")
    workers = threads or min(4, os.cpu_count() or 1)
    out = _HashingWriter(dst, digest_output)
    diff = hashlib.sha256()
    table: list[tuple[int, int, int]] = []
    for chunk, frame in _compress_all(_slices(src, frame_size), level, workers):
        diff.update(chunk)
        out.write(frame)
        table.append((len(frame), len(chunk), _U32.unpack_from(frame, len(frame) - 4)[0]))
    out.write(seek_table_frame(table))
    return SeekableResult(
        compressed_size=out.size,
        compressed_digest="sha256:" + out.hash.hexdigest() if digest_output else None,
        uncompressed_size=sum(u for _, u, _ in table),
        diff_id="sha256:" + diff.hexdigest(),
        frames=len(table),
    )


_U32 = struct.Struct("<I")

#: Pieces (tar headers, body chunks) handed to a compression worker at once,
#: up to this many bytes: a layer of small files is thousands of tiny frames,
#: and a batch crosses the GIL twice, not twice per frame.
BATCH_BYTES = 1 * MiB
BATCH_PIECES = 256


def write_chunked(
    src: IO[bytes],
    dst: IO[bytes],
    *,
    level: int = 3,
    frame_size: int = 4 * MiB,
    threads: int = 0,
    digest_output: bool = True,
) -> SeekableResult:
    """Compress the tar ``src`` into ``dst`` as zstd:chunked *and* seekable zstd.

    Layout (containers/storage ``pkg/chunked``, dialect A)::

        frames: tar headers | body chunk(s) | ... | end of archive
        skippable: zstd(TOC JSON) | skippable: zstd(tar-split) | skippable: footer
        skippable: seek table  (the zstd seekable format's, always last)

    c/storage finds the TOC from the annotations alone, seekable readers from
    the last frame; any zstd decoder skips the skippable frames and yields
    exactly ``src``. An input the cutter cannot describe (not a tar, sparse
    members) comes out as plain seekable zstd without annotations.

    Work per batch of pieces (``_compress_batch``, on ``threads`` workers):
    one ``multi_compress_to_buffer`` call for all its frames, the chunk
    digests, the seek-table rows; this thread cuts the tar, hashes what must
    be hashed in order (the tar, a long file) and writes each batch at once.
    """
    if not 0 < frame_size <= MAX_FRAME_SIZE:
        raise ValueError(f"frame_size must be in 1..{MAX_FRAME_SIZE}")
    workers = threads or min(4, os.cpu_count() or 1)
    out = _HashingWriter(dst, digest_output)
    table: list[tuple[int, int, int]] = []
    cutter = TarCutter(src, frame_size, level)
    cctx = _compressor(level)
    for batch in _compress_batches(_at_least_one(cutter.pieces()), cctx, workers):
        start = out.size
        out.write(batch.frames)
        table += batch.rows
        for piece, (clen, ulen, _), digest in zip(
            batch.pieces, batch.rows, batch.digests, strict=True
        ):
            if piece.file is not None:
                piece.file.add_chunk(start, start + clen, piece.offset, ulen, digest)
            start += clen
    annotations = _write_toc(out, table, cutter, cctx()) if cutter.on else {}
    out.write(seek_table_frame(table))
    return SeekableResult(
        compressed_size=out.size,
        compressed_digest="sha256:" + out.hash.hexdigest() if digest_output else None,
        uncompressed_size=sum(u for _, u, _ in table),
        diff_id="sha256:" + cutter.diff.hexdigest(),
        frames=len(table),
        annotations=annotations,
    )


def _write_toc(
    out: _HashingWriter,
    table: list[tuple[int, int, int]],
    cutter: TarCutter,
    cctx: zstandard.ZstdCompressor,
) -> dict[str, str]:
    """TOC, tar-split and footer frames (each a 0-byte entry of the seek table)."""
    split_z, split_len = cutter.tarsplit()
    toc = cutter.toc("sha256:" + hashlib.sha256(split_z).hexdigest())
    toc_z = cctx.compress(toc)
    toc_at = out.size + 8
    split_at = toc_at + len(toc_z) + 8
    footer = tf.chunked_footer(toc_at, len(toc_z), len(toc), split_at, len(split_z), split_len)
    for data in (toc_z, split_z, footer):
        frame = tf.skippable_frame(data)
        out.write(frame)
        table.append((len(frame), 0, 0))
    return {
        tf.MANIFEST_CHECKSUM: "sha256:" + hashlib.sha256(toc_z).hexdigest(),
        tf.MANIFEST_POSITION: f"{toc_at}:{len(toc_z)}:{len(toc)}:{tf.MANIFEST_TYPE_CRFS}",
        tf.TARSPLIT_POSITION: f"{split_at}:{len(split_z)}:{split_len}",
    }


def _at_least_one(pieces: Iterator[Piece]) -> Iterator[Piece]:
    """The blob must start with a real zstd frame (c/image sniffs its magic)."""
    empty = True
    for piece in pieces:
        empty = False
        yield piece
    if empty:
        yield Piece(b"")


def _compressor(level: int) -> Callable[[], zstandard.ZstdCompressor]:
    """A per-thread compressor factory (a ZstdCompressor is not thread-safe)."""
    local = threading.local()

    def get() -> zstandard.ZstdCompressor:
        cctx: zstandard.ZstdCompressor | None = getattr(local, "cctx", None)
        if cctx is None:
            cctx = local.cctx = zstandard.ZstdCompressor(
                level=level, write_checksum=True, write_content_size=True
            )
        return cctx

    return get


@dataclass(frozen=True, slots=True)
class _Batch:
    """Compressed pieces, in order, as one write."""

    pieces: list[Piece]
    frames: bytes  # every piece's frame, concatenated
    rows: list[tuple[int, int, int]]  # seek-table rows: compressed, raw size, checksum
    digests: list[str]  # "sha256:…" of a body chunk, "" for header bytes


def _compress_batch(batch: list[Piece], cctx: zstandard.ZstdCompressor) -> _Batch:
    """One frame per piece. Many pieces go through one ``multi_compress_to_buffer``
    call (the same frames as ``compress``, with the GIL released once for all)."""
    frame_list: list[Any]
    if len(batch) == 1 or zstandard.backend != "cext":  # the CFFI backend lacks the call
        frame_list = [cctx.compress(p.data) for p in batch]
    else:
        frames = cctx.multi_compress_to_buffer([p.data for p in batch], threads=1)
        frame_list = [frames[i] for i in range(len(batch))]
    joined = frame_list[0] if len(frame_list) == 1 else b"".join(frame_list)
    rows = []
    end = 0
    for piece, frame in zip(batch, frame_list, strict=True):
        end += len(frame)
        rows.append((len(frame), len(piece.data), _U32.unpack_from(joined, end - 4)[0]))
    digests = [_sha256(p.data) if p.file is not None else "" for p in batch]
    return _Batch(batch, bytes(joined), rows, digests)


def _compress_with(batch: list[Piece], cctx: Callable[[], zstandard.ZstdCompressor]) -> _Batch:
    return _compress_batch(batch, cctx())  # the worker thread's own compressor


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _compress_batches(
    pieces: Iterator[Piece], cctx: Callable[[], zstandard.ZstdCompressor], workers: int
) -> Iterator[_Batch]:
    """Batches of pieces compressed on a pool of ``workers`` threads, in order."""
    batches = _batches(pieces)
    if workers <= 1:
        for batch in batches:
            yield _compress_batch(batch, cctx())
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[_Batch]] = deque()
        for batch in batches:
            pending.append(pool.submit(_compress_with, batch, cctx))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _batches(pieces: Iterator[Piece]) -> Iterator[list[Piece]]:
    batch: list[Piece] = []
    size = 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece.data)
        if size >= BATCH_BYTES or len(batch) >= BATCH_PIECES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def seek_table_frame(table: list[tuple[int, int, int]]) -> bytes:
    """The skippable frame for (compressed, decompressed, checksum) per frame."""
    body = b"".join(struct.pack("<III", c, u, x) for c, u, x in table)
    footer = struct.pack("<IBI", len(table), 0x80, SEEKABLE_FOOTER)
    return struct.pack("<II", SEEKABLE_SKIPPABLE, len(body) + len(footer)) + body + footer


def _slices(src: IO[bytes], size: int) -> Iterator[bytes]:
    first = True
    while True:
        chunk = read_full(src, size)
        if not chunk and not first:
            return
        first = False
        yield chunk  # an empty input still gets one (empty) frame
        if len(chunk) < size:
            return


def _compress_all(
    chunks: Iterator[bytes], level: int, workers: int
) -> Iterator[tuple[bytes, bytes]]:
    local = threading.local()

    def compress(chunk: bytes) -> bytes:
        cctx = getattr(local, "cctx", None)
        if cctx is None:
            cctx = local.cctx = zstandard.ZstdCompressor(
                level=level, write_checksum=True, write_content_size=True
            )
        return cctx.compress(chunk)

    if workers <= 1:
        for chunk in chunks:
            yield chunk, compress(chunk)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[tuple[bytes, Future[bytes]]] = deque()
        for chunk in chunks:
            pending.append((chunk, pool.submit(compress, chunk)))
            if len(pending) >= 2 * workers:
                done, fut = pending.popleft()
                yield done, fut.result()
        while pending:
            done, fut = pending.popleft()
            yield done, fut.result()


class _HashingWriter:
    def __init__(self, dst: IO[bytes], digest: bool = True) -> None:
        self._dst = dst
        self._digest = digest
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._dst.write(data)
        if self._digest:
            self.hash.update(data)
        self.size += len(data)
