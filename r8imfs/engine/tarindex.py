"""Tar member index, built with the stdlib ``tarfile`` without reading bodies.

Two ways in, one walker:

* ``index_seekable(fileobj)``: a seekable uncompressed tar (a ``BlobFile`` over
  a plain layer, or over a seekable-zstd reader). ``tarfile`` seeks from
  header to header, so file bodies are never fetched.
* ``index_stream(chunks)``: an iterator of uncompressed chunks from a one-pass
  decoder (gzip, plain zstd). ``ForwardFile`` gives ``tarfile`` a file whose
  forward seeks discard bytes.

``tarfile`` quietly stops at a header it cannot parse, so the walker looks at
the block where iteration stopped: nothing, a short block or zeros is an end
(a layer without its end-of-archive blocks still indexes); anything else is a
``CorruptLayer``. A body cut short is corrupt too, but a last member that
merely lacks its padding is accepted.

Later duplicates of a path win (they keep their own, later, position).
"""

from __future__ import annotations

import base64
import io
import tarfile
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, Protocol, cast

from r8imfs.engine.entry import Entry, Kind, normalise_path
from r8imfs.engine.safetar import GuardedTarInfo
from r8imfs.errors import CorruptLayer

_BLOCK = tarfile.BLOCKSIZE
_REMEMBER = 64 * 1024  # ForwardFile keeps reads up to this size for _check_stop


class SeekableFile(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...
    def tell(self) -> int: ...


_KINDS = {
    tarfile.REGTYPE: Kind.FILE,
    tarfile.AREGTYPE: Kind.FILE,
    tarfile.CONTTYPE: Kind.FILE,
    tarfile.GNUTYPE_SPARSE: Kind.FILE,
    tarfile.DIRTYPE: Kind.DIR,
    tarfile.SYMTYPE: Kind.SYMLINK,
    tarfile.LNKTYPE: Kind.HARDLINK,
    tarfile.CHRTYPE: Kind.CHARDEV,
    tarfile.BLKTYPE: Kind.BLOCKDEV,
    tarfile.FIFOTYPE: Kind.FIFO,
}


class ForwardFile(io.RawIOBase):
    """A forward-only file over an iterator of chunks; seeking ahead discards.

    Remembers its last few small reads (start, data), so the walker can
    inspect the block at which ``tarfile`` gave up.
    """

    def __init__(self, chunks: Iterator[bytes | memoryview]) -> None:
        super().__init__()
        self._chunks = chunks
        self._chunk: bytes | memoryview = b""
        self._at = 0  # read position inside _chunk
        self._pos = 0
        self.recent: deque[tuple[int, bytes]] = deque(maxlen=8)

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        if whence == io.SEEK_END or offset < self._pos:
            raise io.UnsupportedOperation("ForwardFile only seeks forward")
        while self._pos < offset and self._skip(offset - self._pos):
            pass
        return self._pos

    def read(self, size: int = -1) -> bytes:
        start = self._pos
        data = self._take(1 << 62 if size is None or size < 0 else size)
        if len(data) <= _REMEMBER:
            self.recent.append((start, data))
        return data

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def read_view(self, size: int) -> memoryview:
        """Up to ``size`` bytes (at most the rest of one chunk) without copying them."""
        if size <= 0 or not self._fill():
            return memoryview(b"")
        step = min(size, len(self._chunk) - self._at)
        view = memoryview(self._chunk)[self._at : self._at + step]
        self._at += step
        self._pos += step
        return view

    def drain(self) -> int:
        """Consume everything left; return the total length of the stream."""
        self._pos += len(self._chunk) - self._at
        self._chunk, self._at = b"", 0
        for chunk in self._chunks:
            self._pos += len(chunk)
        return self._pos

    def _fill(self) -> bool:
        while self._at >= len(self._chunk):
            nxt = next(self._chunks, None)
            if nxt is None:
                return False
            self._chunk, self._at = nxt, 0
        return True

    def _skip(self, n: int) -> bool:
        if not self._fill():
            return False
        step = min(n, len(self._chunk) - self._at)
        self._at += step
        self._pos += step
        return True

    def _take(self, size: int) -> bytes:
        parts: list[bytes | memoryview] = []
        while size > 0 and self._fill():
            piece = self._chunk[self._at : self._at + size]
            self._at += len(piece)
            self._pos += len(piece)
            size -= len(piece)
            parts.append(piece)
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        return b"".join(parts)  # (chunks that are views come out as bytes)


def index_seekable(fileobj: SeekableFile, size: int) -> list[Entry]:
    """Index a seekable uncompressed tar of ``size`` bytes."""
    return _walk(fileobj, lambda: size)


def index_stream(chunks: Iterator[bytes]) -> tuple[list[Entry], int]:
    """Index a tar delivered as chunks; returns (entries, uncompressed size).

    The iterator is consumed to its end, so a decoder behind it finishes too.
    """
    fwd = ForwardFile(chunks)
    entries = _walk(fwd, fwd.drain)
    return entries, fwd.tell()


def _walk(fileobj: SeekableFile, total_size: Callable[[], int]) -> list[Entry]:
    found: dict[str, Entry] = {}
    last: Entry | None = None
    try:
        tf = tarfile.TarFile(
            fileobj=cast(IO[bytes], fileobj), mode="r", encoding="utf-8", tarinfo=GuardedTarInfo
        )
        for ordinal, info in enumerate(_members(tf)):
            entry = entry_from_tarinfo(info, ordinal)
            if entry is not None:
                found.pop(entry.path, None)
                found[entry.path] = last = entry
        _check_stop(fileobj, tf.offset)
    except tarfile.ReadError as exc:
        if str(exc) == "unexpected end of data":
            _check_last_body(last, total_size())
            return list(found.values())
        if str(exc) != "empty file":
            raise CorruptLayer(f"layer is not a readable tar: {exc}") from exc
    except (tarfile.TarError, EOFError) as exc:
        raise CorruptLayer(f"layer is not a readable tar: {exc}") from exc
    total_size()
    return list(found.values())


def _members(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while True:
        info = tf.next()
        if info is None:
            return
        tf.members.clear()  # type: ignore[attr-defined]  # we never extract: drop TarInfos
        yield info


def _check_stop(fileobj: SeekableFile, offset: int) -> None:
    """Tell a real end of archive from a header tarfile silently rejected."""
    block = _block_at(fileobj, offset)
    if len(block) < _BLOCK or not block.strip(b"\0"):
        return
    raise CorruptLayer(f"invalid tar header at uncompressed offset {offset}")


def _block_at(fileobj: SeekableFile, offset: int) -> bytes:
    if isinstance(fileobj, ForwardFile):
        for start, data in reversed(fileobj.recent):
            if start <= offset < start + len(data):
                return data[offset - start : offset - start + _BLOCK]
        return b""
    fileobj.seek(offset)
    return fileobj.read(_BLOCK)


def _check_last_body(last: Entry | None, total: int) -> None:
    if last is not None and last.data_offset + _stored_size(last) > total:
        raise CorruptLayer(
            f"layer ends inside the body of {last.path!r}: "
            f"needs {last.data_offset + _stored_size(last)} bytes, has {total}"
        )


def _stored_size(entry: Entry) -> int:
    if entry.kind is not Kind.FILE:
        return 0
    if entry.sparse:
        return sum(length for _, length in entry.sparse)
    return entry.size


def entry_from_tarinfo(info: tarfile.TarInfo, ordinal: int) -> Entry | None:
    """The Entry for a member, or None for member types we do not model."""
    kind = _KINDS.get(info.type)
    if kind is None:
        return None
    hardlink = kind is Kind.HARDLINK
    return Entry(
        path=normalise_path(info.name),
        kind=kind,
        mode=info.mode & 0o7777,
        uid=info.uid,
        gid=info.gid,
        mtime=float(info.mtime),
        size=info.size if kind is Kind.FILE else 0,
        linkname=normalise_path(info.linkname) if hardlink else info.linkname,
        devmajor=info.devmajor,
        devminor=info.devminor,
        xattrs=_xattrs(info.pax_headers) if info.pax_headers else {},
        data_offset=info.offset_data,
        ordinal=ordinal,
        sparse=_sparse(info),
    )


def _sparse(info: tarfile.TarInfo) -> tuple[tuple[int, int], ...]:
    extents: Any = info.sparse  # list of (offset, length), or None
    return tuple((int(o), int(n)) for o, n in extents) if extents else ()


_SCHILY = "SCHILY.xattr."
_LIBARCHIVE = "LIBARCHIVE.xattr."


def _xattrs(pax: Mapping[str, str]) -> dict[str, bytes]:
    """Extended attributes from PAX records: GNU/star ``SCHILY.xattr.<name>``
    (raw value) and libarchive's ``LIBARCHIVE.xattr.<%-encoded name>`` (base64)."""
    out: dict[str, bytes] = {}
    for key, value in pax.items():
        if key.startswith(_SCHILY):
            out[key[len(_SCHILY) :]] = value.encode("utf-8", "surrogateescape")
        elif key.startswith(_LIBARCHIVE):
            name = urllib.parse.unquote(key[len(_LIBARCHIVE) :])
            out.setdefault(name, _b64(value))
    return out


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        return value.encode("utf-8", "surrogateescape")
