"""Uncompressed tar layers: the tar stream is the blob."""

from __future__ import annotations

from r8imfs.engine.entry import Entry
from r8imfs.engine.readat import BlobFile, ReadAt, ScanProgress
from r8imfs.engine.tarindex import index_seekable


def build_plain_index(
    readat: ReadAt, *, size: int | None = None, progress: ScanProgress | None = None
) -> list[Entry]:
    """Hop header to header; bodies are never read."""
    blob = BlobFile(readat, size=size, buffer_size=16 * 1024, progress=progress)
    return index_seekable(blob, blob.size)


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
