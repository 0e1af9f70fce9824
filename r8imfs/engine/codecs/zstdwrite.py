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
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO

import zstandard

from r8imfs._units import MiB
from r8imfs.engine.codecs.zstdindex import SEEKABLE_FOOTER, SEEKABLE_SKIPPABLE

MAX_FRAME_SIZE = 1 << 30  # sizes are u32 in the table; stay far below


@dataclass(frozen=True, slots=True)
class SeekableResult:
    compressed_size: int
    compressed_digest: str | None  # "sha256:<hex>" of everything written, if asked
    uncompressed_size: int
    diff_id: str  # "sha256:<hex>" of the input
    frames: int


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


def seek_table_frame(table: list[tuple[int, int, int]]) -> bytes:
    """The skippable frame for (compressed, decompressed, checksum) per frame."""
    body = b"".join(struct.pack("<III", c, u, x) for c, u, x in table)
    footer = struct.pack("<IBI", len(table), 0x80, SEEKABLE_FOOTER)
    return struct.pack("<II", SEEKABLE_SKIPPABLE, len(body) + len(footer)) + body + footer


def _slices(src: IO[bytes], size: int) -> Iterator[bytes]:
    first = True
    while True:
        chunk = _read_full(src, size)
        if not chunk and not first:
            return
        first = False
        yield chunk  # an empty input still gets one (empty) frame
        if len(chunk) < size:
            return


def _read_full(src: IO[bytes], size: int) -> bytes:
    parts: list[bytes] = []
    while size > 0:
        data = src.read(size)
        if not data:
            break
        parts.append(data)
        size -= len(data)
    return b"".join(parts)


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
