"""Decoded copies of gzip layers: the tar bytes an indexing pass already made.

Indexing a gzip layer inflates all of it (its tar headers are spread
through the stream). zran's checkpoints then let a later read inflate again
from the nearest point, but a weights copy out of a mount is a second full
inflate of the layer, at zlib speed, right after the first. Instead, the
indexing pass keeps what it inflated: ``build_decoded`` inflates once (with
zlib-ng), feeds the tar walker and writes the same bytes to
``<cache_dir>/decoded/<algorithm>/<hex>.tar``. Reads of that layer are then
``pread`` s of a local file, mostly from the page cache (``DecodedReader``).

Trust: the compressed bytes are hashed on the way and the copy is renamed
into place only when they match the layer's digest, after its data is
flushed, so a copy under its final name is whole and verified. Anything
else (a failed or interrupted pass) leaves at most a ``.*.tmp`` file, which
eviction removes.

Space: a copy is as big as the uncompressed layer, so it is made only for
layers up to a share of the cache bound (``worth_keeping``) and is evicted
with the blobs, least recently used first; a reader holds a shared
``flock`` on it, which eviction respects. A layer whose copy is gone is
indexed again, with zran checkpoints when no copy is wanted.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, cast

from r8imfs.archive.decompress import (
    INFLATE_ERRORS,
    GzipInflater,
    HashingReader,
    chunks_of,
)
from r8imfs.archive.entry import Entry
from r8imfs.archive.tarindex import index_stream
from r8imfs.archive.writer import BackgroundWriter
from r8imfs.errors import CorruptLayer, DigestMismatch
from r8imfs.oci.digest import validate

#: A copy is kept for a layer whose compressed size is at most 1/SHARE of
#: the cache bound (weights barely compress: their copy is about as big).
SHARE = 2


def decoded_path(cache_dir: str | os.PathLike[str], digest: str) -> Path:
    algorithm, hexdigest = validate(digest).split(":", 1)
    return Path(cache_dir) / "decoded" / algorithm / f"{hexdigest}.tar"


def worth_keeping(compressed_size: int, max_bytes: int) -> bool:
    return compressed_size * SHARE <= max_bytes


def build_decoded(raw: IO[bytes], digest: str, target: Path) -> tuple[list[Entry], int]:
    """One pass over a gzip layer read from ``raw``: its tar entries and size.

    Its decoded copy is left at ``target`` once the layer hashed to ``digest``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=target.parent)
    writer = BackgroundWriter(functools.partial(_write_all, fd))
    try:
        hashed = HashingReader(raw)
        inflater = GzipInflater(hashed)

        def chunks() -> Iterator[bytes]:
            for chunk in chunks_of(cast(IO[bytes], inflater)):
                writer.write(chunk)
                yield chunk

        try:
            entries, usize = index_stream(chunks())
            hashed.drain()
        except INFLATE_ERRORS as exc:
            raise CorruptLayer(f"gzip layer does not decompress: {exc}") from exc
        finally:
            writer.close()
        got = "sha256:" + hashed.hash.hexdigest()
        if got != digest:
            raise DigestMismatch(f"layer {digest} hashes to {got}: not indexed")
        os.fdatasync(fd)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    return entries, usize


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class DecodedReader:
    """A ``LayerReader`` over a decoded copy: ``pread``, plus ``cached``.

    ``cached`` answers only from the page cache (``RWF_NOWAIT``), so the
    trio side can serve a hit without a worker thread and never waits on
    the disk; a miss (or a kernel without ``RWF_NOWAIT``) says None.
    """

    def __init__(self, path: Path, size: int) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH)  # eviction skips it while we read
            actual = os.fstat(self._fd).st_size
        except BaseException:
            os.close(self._fd)
            raise
        if actual != size:
            os.close(self._fd)
            raise CorruptLayer(f"decoded copy {path} has {actual} bytes, not {size}")
        self._size = size
        self._nowait = hasattr(os, "RWF_NOWAIT")

    @property
    def size(self) -> int:
        return self._size

    def pread(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self._size - offset))
        parts = []
        while size > 0:
            chunk = os.pread(self._fd, size, offset)
            if not chunk:
                raise CorruptLayer("decoded copy is shorter than its layer")
            parts.append(chunk)
            offset += len(chunk)
            size -= len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    read_at = pread

    def cached(self, offset: int, size: int) -> bytes | bytearray | None:
        size = max(0, min(size, self._size - offset))
        if not self._nowait or size == 0:
            return None if size else b""
        buf = bytearray(size)
        try:
            got = os.preadv(self._fd, [buf], offset, os.RWF_NOWAIT)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EOPNOTSUPP, errno.EINVAL):
                if exc.errno != errno.EAGAIN:
                    self._nowait = False
                return None
            raise
        return buf if got == size else None  # not copied again: FUSE replies take any buffer

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> DecodedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
