"""Streaming decompression of whole layers (``Codec.inflate`` in ``table``).

For one sequential pass (``extract``, recompression, one-pass indexing):
gzip may have several members (pigz, some producers concatenate); zstd may
have several frames and skippable frames (the seekable format's seek table).
Either one cut short is a ``CorruptLayer``, never a quietly shorter tar.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import zlib
from collections.abc import Iterator
from typing import IO, Protocol, cast

import pyzstd
import zstandard
from zlib_ng import zlib_ng

from r8imfs.engine.writer import BackgroundWriter
from r8imfs.errors import CorruptLayer

READ = 1024 * 1024
#: Most tar bytes one zlib call may produce.
INFLATE_PIECE = 4 * 1024 * 1024
#: Most compressed bytes one zlib call is given (see ``GzipInflater``).
SLICE = 64 * 1024


class BackgroundHash:
    """sha256 on a thread of its own, so hashing overlaps decompression.

    hashlib and zlib both release the GIL on large buffers: a layer that
    must be hashed *and* inflated then costs the slower of the two, not
    their sum. ``update`` queues (a bounded ``BackgroundWriter`` feeding the
    hash), ``hexdigest`` waits for the queue to drain. Small inputs are
    hashed inline until a big one comes. A big input is queued as views of at
    most ``PIECE`` bytes, so the queue holds at most ``DEPTH * PIECE`` bytes
    whatever size the caller's chunks are (a blob read 4 MiB at a time, say).
    """

    THRESHOLD = 256 * 1024
    PIECE = 1024 * 1024
    DEPTH = 16

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._feed: BackgroundWriter[bytes | memoryview] | None = None

    def update(self, data: bytes | memoryview) -> None:
        if self._feed is None:
            if len(data) < self.THRESHOLD:
                self._hash.update(data)
                return
            self._feed = BackgroundWriter(self._hash.update, depth=self.DEPTH, name="r8imfs-hash")
        if len(data) <= self.PIECE:
            self._feed.write(data)
            return
        view = memoryview(data)
        for start in range(0, len(view), self.PIECE):
            self._feed.write(view[start : start + self.PIECE])

    def hexdigest(self) -> str:
        if self._feed is not None:
            self._feed.close()
            self._feed = None
        return self._hash.hexdigest()


class HashingReader:
    """A read-only file that hashes everything read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.hash = BackgroundHash()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.hash.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: memoryview | bytearray) -> int:
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Hash what the decompressor left unread (padding after the last member)."""
        while self.read(READ):
            pass


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class HashedChunks:
    """The chunks of a forward-only file, each hashed as it passes, uncopied.

    An iterator of views of the file's own chunks (``read_view``, else
    ``read`` of ``READ`` bytes): they must not change once read, as the hash
    thread reads them after they were handed on.
    """

    def __init__(self, raw: Readable) -> None:
        self._read_view = getattr(raw, "read_view", None)
        self._raw = raw
        self.hash = BackgroundHash()
        self.size = 0

    def __iter__(self) -> HashedChunks:
        return self

    def __next__(self) -> memoryview:
        view: memoryview
        if self._read_view is not None:
            view = self._read_view(1 << 62)
        else:
            view = memoryview(self._raw.read(READ))
        if not view:
            raise StopIteration
        self.hash.update(view)
        self.size += len(view)
        return view

    def drain(self) -> None:
        """Hash what the decoder left unread (padding, skippable frames)."""
        for _ in self:
            pass


class ChunkReader:
    """A read-only file over chunks for a decoder that takes what it gets:
    each ``read`` is the next chunk, whatever size was asked."""

    def __init__(self, chunks: Iterator[bytes | memoryview]) -> None:
        self._chunks = chunks

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes | memoryview:
        return next(self._chunks, b"")


class GzipInflater:
    """gzip members as one read-only stream of tar bytes.

    ``gzip.GzipFile`` inflates in 128 KiB steps with a Python-level loop per
    step; this reads 1 MiB inputs and asks zlib for as much output as the
    caller wants (bounded, so a decompression bomb cannot balloon), which is
    about 40% faster on the frame-sized reads ``write_seekable`` makes.
    zlib gets the input in slices (memoryview, no copy) about as big as the
    output asked for, between ``SLICE`` and ``READ``: when a call stops at
    the output bound, zlib copies the input it left over
    (``unconsumed_tail``), so with a whole 1 MiB input every small read
    (tarfile's stream mode reads 10 KiB) would copy up to 1 MiB; and every
    call ends with the thread taking the GIL back, which next to busy Python
    threads can wait a switch interval (5 ms), so big readers (``chunks_of``)
    get few, big calls: on a cold mount, 64 KiB slices made the 1 GiB
    layer's inflate take 5.8 s of its thread's time instead of 3.
    Members may follow each other (pigz); zero padding after the last one is
    tolerated, anything else is not.

    The inflater is zlib-ng's (zlib's API and output): on the benchmark's
    1 GiB fp16-like layer it inflates in 2.75 s where zlib takes 3.86 s
    (docs/benchmarks.md), and inflating is most of what ``extract`` does.
    """

    def __init__(self, raw: HashingReader | IO[bytes]) -> None:
        self._raw = raw
        self._zlib = zlib_ng.decompressobj(31)
        self._pending = memoryview(b"")
        self._members = 0
        self._in_member = False
        self._padding = False
        self._eof = False

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        """What one inflate step gives, up to ``size`` (b"" only at the end): no joins."""
        return self.read(size, one=True)

    def read(self, size: int = -1, *, one: bool = False) -> bytes:
        want = size if size >= 0 else 1 << 62
        parts: list[bytes] = []
        while want > 0 and not self._eof and not (one and parts):
            if not self._pending and not self._refill():
                break
            if self._padding:
                if self._pending.tobytes().strip(b"\0"):
                    raise CorruptLayer("layer has data after the end of its gzip stream")
                self._pending = memoryview(b"")
                continue
            self._in_member = True
            piece = self._pending[: min(max(SLICE, want), READ)]
            out = self._zlib.decompress(piece, min(want, INFLATE_PIECE))
            if self._zlib.eof:
                self._next_member(len(piece))
            else:
                self._pending = self._pending[len(piece) - len(self._zlib.unconsumed_tail) :]
            if out:
                parts.append(out)
            want -= len(out)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _refill(self) -> bool:
        self._pending = memoryview(self._raw.read(READ))
        if self._pending:
            return True
        if self._in_member:
            raise CorruptLayer("layer's gzip stream is truncated")
        if not self._members:
            raise CorruptLayer("layer is empty: no gzip stream at all")
        self._eof = True
        return False

    def _next_member(self, fed: int) -> None:
        # At a member's end the rest of the slice zlib was fed is its
        # unused_data (its unconsumed_tail may still hold a stale copy).
        rest = self._pending[fed:].tobytes()
        self._pending = memoryview(self._zlib.unused_data + rest)
        self._members += 1
        self._in_member = False
        self._zlib = zlib_ng.decompressobj(31)
        if self._pending[:1].tobytes() == b"\0":
            self._padding = True


class ZstdInflater:
    """zstd frames (skippable ones skipped) as one read-only stream of tar bytes.

    ``zstandard``'s ``stream_reader`` ends quietly when the last frame is
    cut short, handing tarfile a shorter tar that may even end on a member
    boundary; here a stream that stops inside a frame is ``CorruptLayer``.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._zstd = pyzstd.EndlessZstdDecompressor()
        self._eof = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        want = size if size >= 0 else 1 << 62
        parts = []
        while want > 0 and not self._eof:
            data = b""
            if self._zstd.needs_input:
                data = self._raw.read(READ)
                if not data:
                    if not self._zstd.at_frame_edge:
                        raise CorruptLayer("layer's zstd stream is truncated")
                    self._eof = True
                    break
            out = self._zstd.decompress(data, min(want, INFLATE_PIECE))
            parts.append(out)
            want -= len(out)
        return b"".join(parts)


def chunks_of(stream: IO[bytes]) -> Iterator[bytes]:
    """A decompressed stream as pieces of at most ``INFLATE_PIECE`` bytes, as made (no joins)."""
    read = getattr(stream, "read1", stream.read)
    return iter(functools.partial(read, INFLATE_PIECE), b"")


#: what a broken gzip stream raises in ``GzipInflater`` (zlib-ng has its own class)
INFLATE_ERRORS: tuple[type[Exception], ...] = (
    zlib.error,
    cast(type[Exception], zlib_ng.error),  # its stub types it as an instance
)

#: what a broken compressed stream raises while being read
DECOMPRESSION_ERRORS: tuple[type[BaseException], ...] = (
    *INFLATE_ERRORS,
    gzip.BadGzipFile,
    EOFError,
    zstandard.ZstdError,
    pyzstd.ZstdError,
)


def corrupt(what: str, exc: BaseException) -> CorruptLayer:
    return CorruptLayer(f"{what} does not decompress: {exc}")
