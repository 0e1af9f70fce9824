"""Positional reads: the one input contract of the layer engine.

A layer blob is reached through ``ReadAt``: ``read_at(offset, size)`` returns
``size`` bytes, fewer only at the end of the blob, and ``size`` is the blob's
length. Implementations must be safe to call from several threads at once
(a positional read has no cursor to share). The async blob cache provides one
over the registry; ``BytesReadAt`` and ``FileReadAt`` serve tests and tools.

Decoded layers expose the same shape (``LayerReader``: ``pread`` on offsets of
the uncompressed tar, plus ``read_at`` as an alias), so a reader can itself be
wrapped in a ``BlobFile`` and handed to ``tarfile``.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from typing import Protocol, Self, runtime_checkable

from r8imfs.engine.entry import Entry

#: Called as ``progress(done, total)``: bytes of the stream scanned so far (the
#: compressed blob; for seekable zstd, the uncompressed tar), never decreasing.
#: (One of three progress notions, each named for itself: ``ScanProgress`` here,
#: one blob scanned; ``image.IndexProgress``, a mount's layers being indexed;
#: ``ops.progress.Transfers``, the bars of a command's uploads and downloads.)
ScanProgress = Callable[[int, int], None]


@runtime_checkable
class ReadAt(Protocol):
    """Positional, thread-safe reads over a blob of known ``size``."""

    @property
    def size(self) -> int: ...

    def read_at(self, offset: int, size: int) -> bytes: ...


@runtime_checkable
class LayerReader(Protocol):
    """Random access to the *uncompressed* tar stream of one layer."""

    @property
    def size(self) -> int: ...

    def pread(self, offset: int, size: int) -> bytes: ...

    def read_at(self, offset: int, size: int) -> bytes: ...

    def cached(self, offset: int, size: int) -> bytes | bytearray | None:
        """What ``pread`` would return, if held decoded already; else None. Never blocks."""
        ...

    def close(self) -> None: ...


class BytesReadAt:
    """A ``ReadAt`` over bytes in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data).toreadonly()

    @property
    def size(self) -> int:
        return len(self._data)

    def read_at(self, offset: int, size: int) -> bytes:
        return bytes(self._data[offset : offset + size])


def pread_all(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes at ``offset`` (fewer only at the end of the file)."""
    parts = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
        size -= len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class FileReadAt:
    """A ``ReadAt`` over a local file, with ``os.pread`` (no shared cursor)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._size = os.fstat(self._fd).st_size

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, size: int) -> bytes:
        return pread_all(self._fd, size, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CountingReadAt:
    """Wraps a ``ReadAt`` and counts calls and bytes, for tests and benchmarks."""

    def __init__(self, inner: ReadAt) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.calls = 0
        self.bytes_read = 0

    @property
    def size(self) -> int:
        return self._inner.size

    def read_at(self, offset: int, size: int) -> bytes:
        data = self._inner.read_at(offset, size)
        with self._lock:
            self.calls += 1
            self.bytes_read += len(data)
        return data


class BlobFile(io.RawIOBase):
    """A seekable read-only file over a ``ReadAt``, for tarfile, zran and zstd.

    Reads smaller than ``buffer_size`` fill a buffer of that size (tar headers
    are 512 bytes); larger reads go straight through. One instance has a cursor,
    so it belongs to one thread; make one per thread over a shared ``ReadAt``.
    """

    def __init__(
        self,
        readat: ReadAt,
        *,
        size: int | None = None,
        buffer_size: int = 64 * 1024,
        progress: ScanProgress | None = None,
    ) -> None:
        super().__init__()
        self._readat = readat
        self._size = readat.size if size is None else size
        self._bufsize = buffer_size
        self._progress = progress
        self._done = 0
        self._pos = 0
        self._buf = b""
        self._buf_start = 0

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence == io.SEEK_END:
            offset += self._size
        elif whence != io.SEEK_SET:
            raise ValueError(f"invalid whence {whence}")
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        self._pos = offset
        return offset

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self._read(len(buffer))
        n = len(data)
        memoryview(buffer).cast("B")[:n] = data
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self._size - self._pos)
        return self._read(size)

    def readall(self) -> bytes:
        return self.read(-1)

    def _read(self, size: int) -> bytes:
        size = min(size, self._size - self._pos)
        if size <= 0:
            return b""
        start = self._pos - self._buf_start
        if start >= 0 and start + size <= len(self._buf):
            data = self._buf[start : start + size]
        elif size >= self._bufsize:
            data = self._fetch(self._pos, size)
        else:
            self._buf = self._fetch(self._pos, self._bufsize)
            self._buf_start = self._pos
            data = self._buf[:size]
        self._pos += len(data)
        return data

    def _fetch(self, offset: int, size: int) -> bytes:
        data = self._readat.read_at(offset, min(size, self._size - offset))
        if self._progress is not None and offset + len(data) > self._done:
            self._done = offset + len(data)  # monotonic: zran re-reads behind itself
            self._progress(self._done, self._size)
        return data


def read_entry(reader: LayerReader, entry: Entry, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes of a file entry's content starting at ``offset``.

    Sparse entries (GNU/PAX sparse) store only their data extents, back to
    back from ``data_offset``; holes read as zeros.
    """
    end = min(entry.size, offset + size)
    if offset >= end:
        return b""
    if not entry.sparse:
        return reader.pread(entry.data_offset + offset, end - offset)
    return _read_sparse(reader, entry, offset, end)


def cached_entry(
    reader: LayerReader, entry: Entry, offset: int, size: int
) -> bytes | bytearray | None:
    """``read_entry``'s answer if the reader has it decoded already, else None.

    Never blocks (sparse entries, and readers that keep nothing decoded,
    always give None): for the trio side, to skip a worker thread on a hit.
    """
    if entry.sparse:
        return None
    end = min(entry.size, offset + size)
    if offset >= end:
        return b""
    return reader.cached(entry.data_offset + offset, end - offset)


def _read_sparse(reader: LayerReader, entry: Entry, offset: int, end: int) -> bytes:
    out = bytearray(end - offset)
    stored = entry.data_offset
    for ext_off, ext_len in entry.sparse:
        lo, hi = max(offset, ext_off), min(end, ext_off + ext_len)
        if lo < hi:
            out[lo - offset : hi - offset] = reader.pread(stored + lo - ext_off, hi - lo)
        stored += ext_len
    return bytes(out)
