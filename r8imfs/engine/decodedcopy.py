"""Decoded copies of layers: the tar bytes an indexing pass already made.

For gzip layers, and for zstd layers without a seek table (one frame, or
frames with no index: what ``skopeo --dest-compress-format zstd`` writes),
which also have to be decoded whole to be listed and can only be decoded
from a frame start. A seekable-zstd or plain layer is indexed from its
headers and read lazily instead.

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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from r8imfs._buffers import scratch
from r8imfs.engine.codecs.decompress import DECOMPRESSION_ERRORS, HashingReader, chunks_of
from r8imfs.engine.codecs.table import CODECS, Codec, Compression
from r8imfs.engine.entry import Entry
from r8imfs.engine.readat import FileReadAt
from r8imfs.engine.tarindex import index_stream
from r8imfs.engine.writer import BackgroundWriter
from r8imfs.errors import CorruptLayer, DigestMismatch, R8imfsError
from r8imfs.oci.digest import validate

#: A copy is kept for a layer whose compressed size is at most 1/SHARE of
#: the cache bound (weights barely compress: their copy is about as big).
SHARE = 2


def decoded_path(cache_dir: str | os.PathLike[str], digest: str) -> Path:
    algorithm, hexdigest = validate(digest).split(":", 1)
    return Path(cache_dir) / "decoded" / algorithm / f"{hexdigest}.tar"


def worth_keeping(compressed_size: int, max_bytes: int) -> bool:
    return compressed_size * SHARE <= max_bytes


def build_decoded(
    raw: IO[bytes], digest: str, target: Path, codec: Codec = CODECS[Compression.GZIP]
) -> tuple[list[Entry], int, Pending]:
    """One pass over a gzip or zstd layer read from ``raw``: its tar entries and size.

    The decoded copy is left as a ``Pending`` file once the layer hashed to
    ``digest``; ``publish`` puts it at ``target``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=target.parent)
    pending = Pending(fd, Path(tmp), target)
    writer = BackgroundWriter(functools.partial(_write_all, fd))
    try:
        hashed = HashingReader(raw)
        inflater = codec.inflate(cast(IO[bytes], hashed))

        def chunks() -> Iterator[bytes]:
            for chunk in chunks_of(inflater):
                writer.write(chunk)
                yield chunk

        try:
            entries, usize = index_stream(chunks())
            hashed.drain()
        except DECOMPRESSION_ERRORS as exc:
            bad = CorruptLayer(f"{codec.compression} layer does not decompress: {exc}")
            _raise_if_corrupt(hashed, digest, f"; {bad.message}")
            raise bad from exc
        finally:
            writer.close()
        _raise_if_corrupt(hashed, digest, "")
    except BaseException:
        pending.discard()
        raise
    return entries, usize, pending


def _raise_if_corrupt(hashed: HashingReader, digest: str, detail: str) -> None:
    """A blob that does not hash to its digest (hashed to its end) is corrupt."""
    try:
        hashed.drain()
    except (OSError, R8imfsError):
        return  # the bytes did not all arrive: the caller's error stands
    got = "sha256:" + hashed.hash.hexdigest()
    if got != digest:
        raise DigestMismatch(f"blob {digest} is corrupt (it hashes to {got}{detail}); not indexed")


@dataclass(slots=True)
class Pending:
    """A decoded copy, whole and verified, not yet under its final name.

    ``publish`` flushes its data and only then renames it into place (so a
    crash can never leave a copy with holes under the final name). It may run
    after the copy is in use: readers hold the file open, not the name.
    """

    fd: int
    path: Path
    target: Path

    def publish(self) -> None:
        try:
            os.fdatasync(self.fd)
            os.replace(self.path, self.target)
        except BaseException:
            self.discard()
            raise
        self._close()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self._close()

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class DecodedReader(FileReadAt):
    """A ``LayerReader`` over a decoded copy: ``pread``, plus ``cached``.

    ``cached`` answers only from the page cache (``RWF_NOWAIT``), so the
    trio side can serve a hit without a worker thread and never waits on
    the disk; a miss (or a kernel without ``RWF_NOWAIT``) says None.
    """

    def __init__(self, path: Path, size: int) -> None:
        super().__init__(path)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH)  # eviction skips it while we read
        except BaseException:
            self.close()
            raise
        if self.size != size:
            self.close()
            raise CorruptLayer(f"decoded copy {path} has {self.size} bytes, not {size}")
        self._nowait = hasattr(os, "RWF_NOWAIT")

    def pread(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.size - offset))
        data = self.read_at(offset, size)
        if len(data) != size:
            raise CorruptLayer("decoded copy is shorter than its layer")
        return data

    def cached(self, offset: int, size: int) -> bytes | bytearray | None:
        size = max(0, min(size, self.size - offset))
        if not self._nowait or size == 0:
            return None if size else b""
        buf = scratch(size)  # returned only if the read filled it
        try:
            got = os.preadv(self._fd, [buf], offset, os.RWF_NOWAIT)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EOPNOTSUPP, errno.EINVAL):
                if exc.errno != errno.EAGAIN:
                    self._nowait = False
                return None
            raise
        return buf if got == size else None  # not copied again: FUSE replies take any buffer
