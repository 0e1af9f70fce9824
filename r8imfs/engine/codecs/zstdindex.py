"""Random access into zstd layers: frame tables and restartable cursors.

Theory of operation
-------------------
A zstd decoder can only (re)start at a frame boundary. Two kinds of layers:

* **Seekable format** (facebook/zstd ``contrib/seekable_format``): the blob
  ends with a skippable frame (magic 0x184D2A5E) whose last 9 bytes are
  ``u32 frame count, u8 descriptor (bit 7: checksums), u32 magic 0x8F92EAB1``,
  preceded by one ``u32 compressed, u32 decompressed[, u32 checksum]`` entry
  per frame. Reading just that tail gives a restart point at every frame, and
  the tar index hops header to header decoding only frames that hold headers.
* **Plain streams** (skopeo, containers/image, ``zstd`` CLI): one pass decodes
  frame by frame (pyzstd's single-frame decompressor reports where each frame
  ends) to feed ``tarindex.index_stream`` and to record frame starts as restart
  points, at least ``MIN_RESTART_SPACING`` apart. A stream that is one huge
  frame has a single restart point at 0: a random read near the end decodes
  the whole layer. Cursors (below) keep sequential reads linear; random access
  into such a layer is the price of its producer's choice, and the blob cache
  above may keep decoded spans.

Skippable frames (zstd:chunked TOCs, the seek table) carry no tar bytes; the
scanner steps over them and libzstd skips them while decoding.

``ZstdLayerReader`` keeps a few cursors: a decoder positioned somewhere in the
uncompressed stream. A read continues the cursor closest below its offset when
that is no further back than the nearest restart point, else starts a new one
there. Each cursor has its own ``BlobFile``; the pool makes ``pread``
thread-safe.
"""

from __future__ import annotations

import bisect
import struct
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import IO, cast

import pyzstd
import zstandard

from r8imfs._units import MiB
from r8imfs.engine.entry import Entry
from r8imfs.engine.readat import BlobFile, ReadAt, ScanProgress
from r8imfs.engine.tarindex import index_seekable, index_stream
from r8imfs.errors import CorruptLayer

ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE_MASK, SKIPPABLE_BASE = 0xFFFFFFF0, 0x184D2A50
SEEKABLE_SKIPPABLE = 0x184D2A5E
SEEKABLE_FOOTER = 0x8F92EAB1
MIN_RESTART_SPACING = 1 * MiB
MAX_CURSORS = 4
#: Compressed bytes a decoding cursor reads from its blob per call.
CURSOR_READ = 1 * MiB
_U32 = struct.Struct("<I")
_TABLE_HEAD = struct.Struct("<4sBBIQ")  # magic, version, flags, count, uncompressed size
_TABLE_MAGIC, _TABLE_VERSION = b"R8ZT", 1


@dataclass(frozen=True, slots=True)
class FrameTable:
    """Restart points: compressed and uncompressed offsets of frame starts."""

    cstarts: tuple[int, ...]
    ustarts: tuple[int, ...]
    uncompressed_size: int
    seekable: bool = False

    def locate(self, offset: int) -> int:
        """Index of the last restart point at or before ``offset``."""
        return max(0, bisect.bisect_right(self.ustarts, offset) - 1)

    def to_bytes(self) -> bytes:
        head = _TABLE_HEAD.pack(
            _TABLE_MAGIC,
            _TABLE_VERSION,
            int(self.seekable),
            len(self.cstarts),
            self.uncompressed_size,
        )
        flat = [v for pair in zip(self.cstarts, self.ustarts, strict=True) for v in pair]
        return head + struct.pack(f"<{len(flat)}Q", *flat)

    @classmethod
    def from_bytes(cls, data: bytes) -> FrameTable:
        try:
            magic, version, flags, count, usize = _TABLE_HEAD.unpack_from(data)
            flat = struct.unpack_from(f"<{2 * count}Q", data, _TABLE_HEAD.size)
        except struct.error as exc:
            raise CorruptLayer("zstd frame table is truncated") from exc
        if magic != _TABLE_MAGIC or version != _TABLE_VERSION:
            raise CorruptLayer("zstd frame table has a bad header")
        return cls(flat[0::2], flat[1::2], usize, bool(flags & 1))


@dataclass(frozen=True, slots=True)
class ZstdIndex:
    entries: list[Entry]
    frames: FrameTable
    uncompressed_size: int


def read_seek_table(readat: ReadAt, size: int | None = None) -> FrameTable | None:
    """The seekable-format frame table from the blob's tail, or None."""
    size = readat.size if size is None else size
    if size < 17:
        return None
    count, descriptor, magic = struct.unpack("<IBI", readat.read_at(size - 9, 9))
    if magic != SEEKABLE_FOOTER or descriptor & 0x7C:
        return None
    width = 12 if descriptor & 0x80 else 8
    frame_len = 8 + count * width + 9
    if frame_len > size:
        return None
    raw = readat.read_at(size - frame_len, frame_len - 9)
    skip_magic, skip_size = struct.unpack_from("<II", raw)
    if skip_magic != SEEKABLE_SKIPPABLE or skip_size != frame_len - 8:
        return None
    return _table_from_entries(raw[8:], count, width, size - frame_len)


def _table_from_entries(raw: bytes, count: int, width: int, data_end: int) -> FrameTable | None:
    cstarts, ustarts = [], []
    c = u = 0
    for i in range(count):
        csize, usize = struct.unpack_from("<II", raw, i * width)
        cstarts.append(c)
        ustarts.append(u)
        c += csize
        u += usize
    if c != data_end:
        return None  # the table does not describe this blob: treat as plain
    if not cstarts:
        cstarts, ustarts = [0], [0]
    return FrameTable(tuple(cstarts), tuple(ustarts), u, seekable=True)


def build_zstd_index(
    readat: ReadAt, *, size: int | None = None, progress: ScanProgress | None = None
) -> ZstdIndex:
    """Tar entries and restart points of a zstd layer (seekable or plain)."""
    table = read_seek_table(readat, size)
    if table is not None:
        with ZstdLayerReader(readat, table) as reader:
            view = BlobFile(reader, buffer_size=64 * 1024, progress=progress)
            entries = index_seekable(view, table.uncompressed_size)
        return ZstdIndex(entries, table, table.uncompressed_size)
    points: list[tuple[int, int]] = []
    blob = BlobFile(readat, size=size, buffer_size=MiB, progress=progress)
    entries, usize = index_stream(_scan_frames(blob, points))
    if not points:
        points.append((0, 0))
    cs, us = zip(*points, strict=True)
    return ZstdIndex(entries, FrameTable(cs, us, usize), usize)


def _scan_frames(blob: BlobFile, points: list[tuple[int, int]]) -> Iterator[bytes]:
    """Decode a zstd stream frame by frame, recording restart points."""
    cpos = upos = 0
    last_point = -MIN_RESTART_SPACING
    buf = b""
    while True:
        buf = _fill(blob, buf, 8)
        if not buf:
            return
        magic = _U32.unpack_from(buf)[0] if len(buf) >= 4 else 0
        if magic & SKIPPABLE_MASK == SKIPPABLE_BASE and len(buf) >= 8:
            skip = 8 + _U32.unpack_from(buf, 4)[0]
            buf = _skip(blob, buf, skip, cpos)
            cpos += skip
            continue
        if magic != ZSTD_MAGIC:
            raise CorruptLayer(f"zstd layer: no zstd frame at compressed offset {cpos}")
        if upos - last_point >= MIN_RESTART_SPACING:
            points.append((cpos, upos))
            last_point = upos
        frame_out, buf, frame_len = yield from _decode_frame(blob, buf, cpos)
        upos += frame_out
        cpos += frame_len


def _decode_frame(
    blob: BlobFile, buf: bytes, cpos: int
) -> Generator[bytes, None, tuple[int, bytes, int]]:
    """Yield one frame's output; return (output size, leftover input, frame size)."""
    dec = pyzstd.ZstdDecompressor()
    fed, produced = len(buf), 0
    try:
        out = dec.decompress(buf, MiB)
        while True:
            if out:
                produced += len(out)
                yield out
            if dec.eof:
                break
            data = b""
            if dec.needs_input:
                data = blob.read(MiB)
                if not data:
                    raise CorruptLayer(f"zstd layer ends inside the frame at offset {cpos}")
                fed += len(data)
            out = dec.decompress(data, MiB)
    except pyzstd.ZstdError as exc:
        raise CorruptLayer(f"zstd layer does not decompress (frame at {cpos}): {exc}") from exc
    rest = dec.unused_data
    return produced, rest, fed - len(rest)


def _fill(blob: BlobFile, buf: bytes, want: int) -> bytes:
    while len(buf) < want:
        more = blob.read(MiB)
        if not more:
            break
        buf += more
    return buf


def _skip(blob: BlobFile, buf: bytes, n: int, cpos: int) -> bytes:
    if n <= len(buf):
        return buf[n:]
    target = blob.tell() + n - len(buf)
    if target > blob.size:
        raise CorruptLayer(f"zstd layer ends inside the skippable frame at offset {cpos}")
    blob.seek(target)
    return b""


class _Cursor:
    """A decoder positioned at ``pos`` in the uncompressed stream."""

    def __init__(self, readat: ReadAt, cstart: int, ustart: int) -> None:
        # zstd asks for ~128 KiB of input at a time; over the blob cache each
        # ReadAt call is a round trip through the trio loop, so read 1 MiB
        # per call (8 times fewer trips; docs/benchmarks.md, issue 4).
        self._blob = BlobFile(readat, buffer_size=CURSOR_READ)
        self._blob.seek(cstart)
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], self._blob), read_across_frames=True, closefd=False
        )
        self.pos = ustart

    def read(self, offset: int, size: int) -> bytes:
        while self.pos < offset:
            skipped = self._reader.read(min(offset - self.pos, 4 * MiB))
            if not skipped:
                break
            self.pos += len(skipped)
        parts: list[bytes] = []
        while size > 0:
            data = self._reader.read(size)
            if not data:
                break
            parts.append(data)
            self.pos += len(data)
            size -= len(data)
        return b"".join(parts)

    def close(self) -> None:
        self._reader.close()  # type: ignore[no-untyped-call]
        self._blob.close()


class ZstdLayerReader:
    """``pread`` on uncompressed offsets of a zstd layer; thread-safe."""

    def __init__(self, readat: ReadAt, frames: FrameTable | bytes) -> None:
        self._readat = readat
        self._frames = frames if isinstance(frames, FrameTable) else FrameTable.from_bytes(frames)
        self._idle: list[_Cursor] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def size(self) -> int:
        return self._frames.uncompressed_size

    @property
    def frames(self) -> FrameTable:
        return self._frames

    def pread(self, offset: int, size: int) -> bytes:
        size = min(size, self.size - offset)
        if size <= 0:
            return b""
        cursor = self._acquire(offset)
        try:
            data = cursor.read(offset, size)
        except zstandard.ZstdError as exc:
            cursor.close()
            raise CorruptLayer(f"zstd layer does not decompress near {offset}: {exc}") from exc
        except BaseException:
            cursor.close()
            raise
        self._release(cursor)
        if len(data) != size:
            raise CorruptLayer(f"zstd layer ends at {offset + len(data)}, index says {self.size}")
        return data

    read_at = pread

    def cached(self, offset: int, size: int) -> None:
        """Cursors keep no decoded buffer to answer from: always a read."""
        return None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for cursor in idle:
            cursor.close()

    def __enter__(self) -> ZstdLayerReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _acquire(self, offset: int) -> _Cursor:
        i = self._frames.locate(offset)
        floor = self._frames.ustarts[i]
        with self._lock:
            if self._closed:
                raise ValueError("ZstdLayerReader is closed")
            best = None
            for cursor in self._idle:
                if floor <= cursor.pos <= offset and (best is None or cursor.pos > best.pos):
                    best = cursor
            if best is not None:
                self._idle.remove(best)
                return best
        return _Cursor(self._readat, self._frames.cstarts[i], floor)

    def _release(self, cursor: _Cursor) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(cursor)
                if len(self._idle) <= MAX_CURSORS:
                    return
                cursor = self._idle.pop(0)
        cursor.close()
