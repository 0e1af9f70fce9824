"""One sequential pass over a zstd layer, its frames decoded in parallel.

zstd frames are independent: each starts a fresh decoder, and nothing in one
refers to bytes of another (RFC 8878 §3.1.1). A layer written as many frames
(``r8imfs zstd``'s zstd:chunked, a frame per chunk of at most 2 MiB; the
seekable format; any producer that flushes frames) can therefore be read
once, in order, cut into frames as it arrives, and decoded a frame per pool
task (zstandard drops the GIL while it decodes), the outputs handed on in
order: the bytes a sequential decoder gives, on every core.

Where a frame ends is read from the frame itself: its header, then blocks
each led by a 3-byte header giving its stored size, then an optional 4-byte
checksum; a skippable frame gives its length in its header. Walking those
costs a few bytes per block (at most 128 KiB of output each) and needs no
seek table, nor trust in one: a frame cut wrongly fails to decode.

A frame whose header gives its content size, at most ``WHOLE_MAX``, is
decoded whole in one task: one allocation of the exact size, the content
checksum (when present) checked by libzstd. Any other frame (a producer that
wrote the whole layer as one frame, as the ``zstd`` CLI does) is decoded as it
streams, in the calling thread, after the frames before it: memory stays
bounded and such a layer costs what the sequential pass always cost.
Skippable frames (the zstd:chunked TOC and tar-split, the seek table) carry
no tar bytes and are stepped over, as libzstd steps over them.

A stream that ends inside a frame, or holds anything but frames, is a
``CorruptLayer``, never a shorter tar.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import zstandard

from r8imfs._units import MiB
from r8imfs.engine.codecs.units import thread_dctx
from r8imfs.engine.codecs.zstdindex import SKIPPABLE_BASE, SKIPPABLE_MASK, ZSTD_MAGIC
from r8imfs.errors import CorruptLayer

#: Frames with a declared content size up to this are decoded whole, in a pool task.
WHOLE_MAX = 16 * MiB
#: Decoded bytes of whole frames in flight (decoding, or decoded and not yet handed on).
AHEAD = 16 * MiB
#: A streamed frame is handed to its decoder in pieces of about this many bytes.
PART = 1 * MiB

_FCS_LEN = (0, 2, 4, 8)  # by Frame_Content_Size_flag; flag 0 is 1 byte when single-segment
_DID_LEN = (0, 1, 2, 4)  # by Dictionary_ID_flag


class Kind(enum.Enum):
    WHOLE = "whole"  # a whole frame of known content size
    PART = "part"  # a piece of a frame decoded as it streams


@dataclass(frozen=True, slots=True)
class Piece:
    """Compressed bytes of one frame, or of a part of one (``Kind.PART``)."""

    kind: Kind
    data: list[memoryview]
    offset: int  # of the frame's start in the compressed stream
    size: int = 0  # WHOLE: the frame's content size
    first: bool = True  # PART: the frame's first piece
    last: bool = True  # PART: the frame's last piece


class _Held:
    """Compressed chunks addressed by stream offset: peek a few bytes, take a range."""

    def __init__(self, chunks: Iterator[bytes | memoryview], name: str) -> None:
        self._chunks = chunks
        self._name = name
        self._views: deque[memoryview] = deque()
        self.start = 0  # stream offset of the first byte held
        self.end = 0  # stream offset after the last byte held

    def more(self) -> bool:
        """Hold one more chunk; False at the end of the stream."""
        for chunk in self._chunks:
            if chunk:
                self._views.append(memoryview(chunk).cast("B"))
                self.end += len(chunk)
                return True
        return False

    def want(self, end: int, offset: int) -> None:
        """Hold bytes up to ``end``, inside the frame at ``offset``."""
        while self.end < end:
            if not self.more():
                raise CorruptLayer(
                    f"{self._name}: the zstd stream ends inside the frame at offset {offset}"
                )

    def peek(self, at: int, n: int) -> int:
        """The little-endian integer of ``n`` held bytes at stream offset ``at``."""
        skip, out = at - self.start, b""
        for view in self._views:
            if skip >= len(view):
                skip -= len(view)
                continue
            out += view[skip : skip + n - len(out)]
            skip = 0
            if len(out) == n:
                break
        return int.from_bytes(out, "little")

    def take(self, end: int) -> list[memoryview]:
        """The held bytes before stream offset ``end``, let go."""
        out = []
        while self.start < end:
            view = self._views[0]
            n = min(len(view), end - self.start)
            if n == len(view):
                self._views.popleft()
            else:
                self._views[0] = view[n:]
                view = view[:n]
            out.append(view)
            self.start += n
        return out

    def skip(self, end: int, offset: int) -> None:
        """Let go of everything before ``end`` without holding it all at once."""
        while True:
            self.take(min(end, self.end))
            if self.start == end:
                return
            self.want(self.start + 1, offset)


def cut_frames(
    chunks: Iterable[bytes | memoryview], name: str = "layer", whole_max: int = WHOLE_MAX
) -> Iterator[Piece]:
    """The frames of a zstd stream given as chunks, skippable frames left out."""
    held = _Held(iter(chunks), name)
    pos = 0
    while held.end > pos or held.more():
        held.want(pos + 8, pos)  # the smallest frame or skippable header
        magic = held.peek(pos, 4)
        if magic & SKIPPABLE_MASK == SKIPPABLE_BASE:
            end = pos + 8 + held.peek(pos + 4, 4)
            held.skip(end, pos)
        elif magic == ZSTD_MAGIC:
            end = yield from _frame(held, pos, whole_max)
        else:
            raise CorruptLayer(f"{name}: no zstd frame at compressed offset {pos}")
        pos = end


def _frame(held: _Held, pos: int, whole_max: int) -> Generator[Piece, None, int]:
    """Walk one zstd frame's blocks; its pieces. Returns where it ends."""
    fhd = held.peek(pos + 4, 1)
    single = bool(fhd & 0x20)
    if fhd & 0x08:
        raise CorruptLayer(f"zstd frame at offset {pos}: reserved header bit set")
    fcs_len = _FCS_LEN[fhd >> 6] or int(single)
    header_end = pos + 5 + (not single) + _DID_LEN[fhd & 3] + fcs_len
    held.want(header_end, pos)
    size = None
    if fcs_len:
        size = held.peek(header_end - fcs_len, fcs_len) + (256 if fcs_len == 2 else 0)
    whole = size is not None and size <= whole_max
    first, at, last = True, header_end, False
    while not last:
        held.want(at + 3, pos)
        block = held.peek(at, 3)
        kind, last = block >> 1 & 3, bool(block & 1)
        if kind == 3:
            raise CorruptLayer(f"zstd frame at offset {pos}: reserved block type")
        at += 3 + (1 if kind == 1 else block >> 3)
        whole = whole and at - pos <= 2 * whole_max  # its blocks' sizes may lie
        if not whole and min(at, held.end) - held.start >= PART:
            yield Piece(Kind.PART, held.take(min(at, held.end)), pos, first=first, last=False)
            first = False
    end = at + 4 * bool(fhd & 0x04)
    held.want(end, pos)
    if whole and size is not None:
        yield Piece(Kind.WHOLE, held.take(end), pos, size)
    else:
        yield Piece(Kind.PART, held.take(end), pos, first=first, last=True)
    return end


def decode_whole(piece: Piece, name: str = "layer") -> bytes:
    """Pool task: a whole frame's content (its checksum, if any, checked)."""
    data = piece.data[0] if len(piece.data) == 1 else b"".join(piece.data)
    try:
        out = thread_dctx().decompress(data, max_output_size=piece.size)
    except zstandard.ZstdError as exc:
        raise CorruptLayer(
            f"{name}: the zstd frame at offset {piece.offset} does not decompress: {exc}"
        ) from exc
    if len(out) != piece.size:
        raise CorruptLayer(
            f"{name}: the zstd frame at offset {piece.offset} decodes to {len(out)} bytes, "
            f"its header says {piece.size}"
        )
    return out


def decode_frames(
    chunks: Iterable[bytes | memoryview],
    pool: Executor,
    *,
    ahead: int = AHEAD,
    name: str = "layer",
    whole_max: int = WHOLE_MAX,
) -> Generator[bytes, None, None]:
    """The decoded stream of ``chunks`` (a zstd stream), in order, frames
    decoded on ``pool`` while the stream arrives. Closing the iterator
    drops the frames in flight."""
    pending: deque[tuple[Future[bytes], int]] = deque()
    held = 0
    streaming: zstandard.ZstdDecompressionObj | None = None
    try:
        for piece in cut_frames(chunks, name, whole_max):
            if piece.kind is Kind.WHOLE:
                pending.append((pool.submit(decode_whole, piece, name), piece.size))
                held += piece.size
                while pending and (held > ahead or pending[0][0].done()):
                    fut, size = pending.popleft()
                    held -= size
                    if out := fut.result():
                        yield out
                continue
            while pending:  # a streamed frame follows everything before it
                yield pending.popleft()[0].result()
            held = 0
            if piece.first:
                streaming = zstandard.ZstdDecompressor().decompressobj()
            assert streaming is not None
            yield from _stream(streaming, piece, name)
        while pending:
            yield pending.popleft()[0].result()
    finally:
        for fut, _ in pending:
            fut.cancel()


def _stream(dobj: zstandard.ZstdDecompressionObj, piece: Piece, name: str) -> Iterator[bytes]:
    try:
        for view in piece.data:
            out = dobj.decompress(view)
            if out:
                yield out
    except zstandard.ZstdError as exc:
        raise CorruptLayer(
            f"{name}: the zstd frame at offset {piece.offset} does not decompress: {exc}"
        ) from exc
    if piece.last and not dobj.eof:
        raise CorruptLayer(f"{name}: the zstd frame at offset {piece.offset} ends early")
