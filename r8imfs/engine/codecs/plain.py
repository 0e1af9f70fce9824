"""Uncompressed tar layers: the tar stream is the blob.

Indexing hops from header to header (``tarfile`` seeks past each body), so
what it costs is how the hops are read. ``HeaderWalk`` adapts to the layer:

* *Sparse* (the next header is far from where the last read ended: a big
  file's body was skipped, as in a model layer): a small read
  (``HOP_READ``) at the header, fetched as exactly that range when the
  ``ReadAt`` can (``ExactReadAt.fetch_at``: the blob cache's
  ``fetch_range``), so listing a layer of multi-GB files moves a few KiB per
  file, not a 4 MiB block and its readahead.
* *Dense* (headers within ``DENSE_GAP`` of the last read's end: small and
  middling files): each read is twice the size of the last, and from
  ``BLOCK_READ`` on they go through ``read_at`` (the blob cache's aligned
  blocks; where the headers are within its ``SequentialDetector`` slack, its
  readahead keeps several GETs in flight), so a whole-layer pass still runs
  at the speed of the cache's reads, a handful of small GETs later.

A hop longer than ``DENSE_GAP`` starts again from ``HOP_READ``. The bound is
a trade of bytes against round trips: below it the walk is bound by the
latency of one GET per header (500 files of 150-450 KB behind 20 ms per
request: 3 s through blocks, 37 s with one exact GET per header), above it
by the bytes a block would carry past the header.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from r8imfs.engine.entry import Entry
from r8imfs.engine.readat import BlobFile, ReadAt, ScanProgress
from r8imfs.engine.tarindex import index_seekable

KiB = 1024
MiB = 1024 * KiB
#: The read at a header reached by a long hop: a few headers' worth (PAX
#: records and long names included), one round trip.
HOP_READ = 16 * KiB
#: A header at most this far past the end of the last read continues a dense
#: walk (module docstring).
DENSE_GAP = 512 * KiB
#: From this size on, a dense walk reads through ``read_at`` (blocks and
#: readahead) instead of exact ranges...
BLOCK_READ = 1 * MiB
#: ...and at most this much per read (one blob cache block).
MAX_READ = 4 * MiB


@runtime_checkable
class ExactReadAt(ReadAt, Protocol):
    """A ``ReadAt`` that can also fetch exactly a range (no block rounding, no readahead)."""

    def fetch_at(self, offset: int, size: int) -> bytes | bytearray: ...


class HeaderWalk(BlobFile):
    """A seekable file over a ``ReadAt`` for ``tarfile``'s header walk (module docstring).

    ``BlobFile`` with another buffering rule: how much each underlying read
    takes depends on how dense the walk is. One instance has a cursor: it
    belongs to one thread. Counters: ``reads`` (underlying reads),
    ``exact_reads`` (of them, through ``fetch_at``).
    """

    def __init__(
        self, readat: ReadAt, *, size: int | None = None, progress: ScanProgress | None = None
    ) -> None:
        super().__init__(readat, size=size, progress=progress)
        self._exact = readat if isinstance(readat, ExactReadAt) else None
        self._view: bytes | bytearray | memoryview = b""
        self._last_end = -DENSE_GAP - 1  # where the last underlying read ended
        self._run = HOP_READ
        self.reads = 0
        self.exact_reads = 0

    def _read(self, size: int) -> bytes:
        size = min(size, self._size - self._pos)
        if size <= 0:
            return b""
        start = self._pos - self._buf_start
        if start < 0 or start + size > len(self._view):
            self._fill(size)
            start = 0
        data = bytes(self._view[start : start + size])
        self._pos += len(data)
        return data

    def _fill(self, size: int) -> None:
        """Read at ``self._pos``: at least ``size`` bytes, more as the walk's density says."""
        pos = self._pos
        # (a header that starts inside the last read and runs past its end continues it)
        if self._buf_start <= pos <= self._last_end + DENSE_GAP:
            self._run = min(2 * self._run, MAX_READ)
        else:
            self._run = HOP_READ
        want = min(max(size, self._run), self._size - pos)
        self.reads += 1
        if self._exact is not None and self._run < BLOCK_READ:
            self.exact_reads += 1
            data: bytes | bytearray = self._exact.fetch_at(pos, want)
        else:
            data = self._readat.read_at(pos, want)
        self._view, self._buf_start = memoryview(data), pos
        self._last_end = pos + len(data)
        if self._progress is not None and self._last_end > self._done:
            self._done = self._last_end
            self._progress(self._done, self._size)


def build_plain_index(
    readat: ReadAt, *, size: int | None = None, progress: ScanProgress | None = None
) -> list[Entry]:
    """Hop header to header (``HeaderWalk``); bodies are never read."""
    walk = HeaderWalk(readat, size=size, progress=progress)
    return index_seekable(walk, walk.size)


class PlainLayerReader:
    """``pread`` straight through the ``ReadAt``."""

    def __init__(self, readat: ReadAt, size: int | None = None) -> None:
        self._readat = readat
        self._size = readat.size if size is None else size

    @property
    def size(self) -> int:
        return self._size

    def pread(self, offset: int, size: int) -> bytes:
        size = min(size, self._size - offset)
        if size <= 0:
            return b""
        return self._readat.read_at(offset, size)

    read_at = pread

    def cached(self, offset: int, size: int) -> None:
        """Nothing is kept decoded: every read goes to the ``ReadAt``."""
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> PlainLayerReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
