"""Layers with a table of contents (zstd:chunked, eStargz), for the mount and extract.

The one step between "a layer descriptor" and "a served layer" for TOC layers:
``open_toc_layer`` looks at the descriptor's annotations (no I/O), reads the
TOC with one or two exact ranged GETs (``RangeGets``: a TOC of a few hundred
KiB should not cost a 4 MiB cache block, let alone the whole blob), checks it
against the digest the annotation gives (``engine.codecs.toc.load_toc``), and
returns the TOC's entries with a ``TocReader`` over the layer's body. Nothing
of the body is read: a cold mount of a TOC image is ready once every TOC is in.

Why nothing goes into the index database: a TOC gives no tar offsets, so each
``Entry.data_offset`` is a *virtual* offset (file bodies back to back in TOC
order), which means nothing to the codecs that read a stored index. Instead the
bytes ``load_toc`` read are kept as they came (``RecordedReads``, a ``.toc``
file beside the layer's index) and the TOC is loaded again from them at the next
mount: checked against its digest again, parsed again, no GET. A record that no
longer checks out is deleted and the TOC read from the registry once more.

Trust: manifest digest → annotation → TOC digest → each chunk's sha256, checked
by ``TocReader`` before a byte is served. A TOC that fails any check is logged
on one line and ``None`` is returned: the caller then indexes the layer as the
plain compressed stream it also is.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from r8imfs import _threads
from r8imfs.cache.reader import BlobSource
from r8imfs.engine.codecs.toc import MAX_TOC_BYTES, TocIndex, load_toc, toc_kind
from r8imfs.engine.codecs.tocread import TocReader
from r8imfs.engine.entry import Entry
from r8imfs.engine.readat import ReadAt
from r8imfs.errors import BadToc, RangeUnsupported, RegistryError
from r8imfs.oci.digest import short
from r8imfs.oci.manifest import Descriptor
from r8imfs.oci.reference import Repository

log = logging.getLogger("r8imfs.image")

#: Verified chunks a layer's reader keeps decoded. Small: the mount's decoded
#: blocks (``image.DecodedBlocks``) serve re-reads, and an image may have dozens of layers.
READER_CACHE = 16 * 1024 * 1024
#: An async read of ``(offset, size)`` used when the registry ignores ``Range``.
AsyncRead = Callable[[int, int], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class TocLayer:
    """A TOC layer, ready to serve: its entries (virtual offsets) and reader."""

    kind: str  # "zstd:chunked", "zstd:chunked-legacy" or "estargz"
    entries: tuple[Entry, ...]
    reader: TocReader
    toc_bytes: int  # bytes fetched to read the TOC (past the blob cache)


class RangeGets:
    """A ``ReadAt`` making one exact ranged GET per ``read_at``, for the TOC.

    Call ``read_at`` from a ``_threads.run_sync`` thread (it runs the GET on the
    loop). A registry that answers a range with the whole blob is not streamed
    here: the read goes to ``fallback`` (the blob cache, which knows how to take
    a whole blob in), or raises ``RangeUnsupported`` when there is none.
    """

    def __init__(
        self,
        client: BlobSource,
        repo: Repository,
        digest: str,
        size: int,
        fallback: AsyncRead | None = None,
    ) -> None:
        self._client = client
        self._repo = repo
        self._digest = digest
        self._size = size
        self._fallback = fallback
        self.bytes_fetched = 0
        self.requests = 0

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, size: int) -> bytes:
        return _threads.from_thread(self._get, offset, size)

    async def _get(self, offset: int, size: int) -> bytes:
        end = min(self._size, offset + size)
        if offset >= end:
            return b""
        self.requests += 1
        async with self._client.open_blob(self._repo, self._digest, offset, end) as stream:
            if stream.status == 206 and stream.start == offset:
                return await self._collect(stream.chunks(), end - offset)
        if self._fallback is None:
            raise RangeUnsupported(f"{self._repo.registry} ignores Range on blob {self._digest}")
        return await self._fallback(offset, end - offset)

    async def _collect(self, chunks: AsyncIterator[bytes], length: int) -> bytes:
        buf = bytearray()
        async for chunk in chunks:
            self.bytes_fetched += len(chunk)
            buf += chunk
            if len(buf) > length:
                raise RegistryError(f"{self._repo.registry} sent more than asked of {self._digest}")
        if len(buf) != length:  # a transfer problem, not a TOC to refuse
            raise RegistryError(
                f"{self._repo.registry} sent {len(buf)} of {length} bytes asked of {self._digest}"
            )
        return bytes(buf)


class RecordedReads:
    """A ``ReadAt`` answering the ranges read before from a record, the rest from ``inner``.

    ``load_toc`` asks for the same ranges of a layer every time, so the ranges
    one mount read (``fresh``) let the next one load the TOC with no request.
    """

    def __init__(self, inner: ReadAt, saved: dict[tuple[int, int], bytes]) -> None:
        self._inner = inner
        self.saved = saved
        self.fresh: dict[tuple[int, int], bytes] = {}

    @property
    def size(self) -> int:
        return self._inner.size

    def read_at(self, offset: int, size: int) -> bytes:
        data = self.saved.get((offset, size))
        if data is None:
            data = self.fresh[(offset, size)] = self._inner.read_at(offset, size)
        return data


_RANGE = struct.Struct("<QQ")


def load_record(path: Path) -> dict[tuple[int, int], bytes]:
    """The ranges kept in ``path`` (none if it is missing, too big or cut short)."""
    try:
        raw = path.read_bytes() if path.stat().st_size <= 2 * MAX_TOC_BYTES else b""
    except OSError:
        return {}
    out: dict[tuple[int, int], bytes] = {}
    pos = 0
    while pos + _RANGE.size <= len(raw):
        offset, size = _RANGE.unpack_from(raw, pos)
        pos += _RANGE.size
        if pos + size > len(raw):
            return {}
        out[(offset, size)] = raw[pos : pos + size]
        pos += size
    return out if pos == len(raw) else {}


def save_record(path: Path, ranges: dict[tuple[int, int], bytes]) -> None:
    """Write the ranges to ``path`` atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        for (offset, size), data in ranges.items():
            f.write(_RANGE.pack(offset, size) + data)
    os.replace(tmp, path)


def record_path(index_file: Path) -> Path:
    """Where a layer's TOC reads are kept: beside its index database file."""
    return index_file.with_suffix(".toc")


async def open_toc_layer(
    desc: Descriptor, toc_readat: ReadAt, body_readat: ReadAt, *, record: Path | None = None
) -> TocLayer | None:
    """The layer served through its TOC, or None: no TOC announced, or one refused.

    ``toc_readat`` is where the TOC is read (``RangeGets``, or the blob cache
    when the blob is there whole); ``body_readat`` is where the reader fetches
    chunks from. Both are called from worker threads that may call back into
    trio (``_threads.run_sync``). ``record``: a file keeping the TOC's bytes
    between runs (``RecordedReads``).
    """
    what = f"layer {short(desc.digest)}"
    try:
        if toc_kind(desc.annotations) is None:
            return None  # the common case: no I/O at all
        index = await _load(desc, toc_readat, record)
    except BadToc as exc:
        log.warning("%s: TOC refused (%s); reading it as a plain stream instead", what, exc)
        return None
    if index is None:
        return None
    reader = TocReader(body_readat, index, cache_bytes=READER_CACHE)
    fetched = getattr(toc_readat, "bytes_fetched", 0)
    log.info(
        "%s: %s TOC of %d entries, %d bytes read", what, index.kind, len(index.entries), fetched
    )
    return TocLayer(index.kind, tuple(index.entries), reader, fetched)


async def _load(desc: Descriptor, toc_readat: ReadAt, record: Path | None) -> TocIndex | None:
    """``load_toc`` through the record, if any; a record that fails is dropped, once."""
    saved = await _threads.run_io(load_record, record) if record is not None else {}
    reads = RecordedReads(toc_readat, saved)
    try:
        index = await _threads.run_sync(load_toc, reads, desc.annotations)
    except BadToc:
        if record is None or not saved:
            raise
        await _threads.run_io(record.unlink, True)  # damaged on disk: ask the registry
        reads = RecordedReads(toc_readat, {})
        index = await _threads.run_sync(load_toc, reads, desc.annotations)
    if record is not None and reads.fresh:
        try:
            await _threads.run_io(save_record, record, {**reads.saved, **reads.fresh})
        except OSError as exc:  # the mount goes on; the next one reads the TOC again
            log.warning("could not keep the TOC of %s: %s", short(desc.digest), exc)
    return index
