"""``extract`` through a layer's TOC: fetch only the weights files' chunks.

A layer that announces a TOC (zstd:chunked, eStargz; ``image.toclayer``)
lists its files before any body is read. When the weights are a small part of
such a layer (r8im's fallback rule picks the ``COPY . /src`` layer, code and
all), ``extract`` reads the TOC with one or two ranged GETs and then only the
chunks of the files it keeps, each checked against its TOC digest before it is
written: the trust chain is manifest → annotation → TOC digest → chunk digest,
as on a mount. Files are staged and published only once every one of them was
read (``Sink.commit``), as on the stream path.

When the weights are most of the layer (a ``# weights`` layer), one streamed
GET is faster than ranged GETs chunk by chunk, so ``None`` sends the layer to
the stream path, which checks the blob's digest instead. ``None`` too for a
layer without a TOC, a refused TOC (logged) or a registry ignoring ``Range``.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Callable
from typing import IO, Protocol, cast

from r8imfs import _threads
from r8imfs.engine.codecs.toc import TocIndex, load_toc, toc_kind
from r8imfs.engine.codecs.tocread import TocReader
from r8imfs.engine.entry import Entry, Kind
from r8imfs.engine.readat import read_entry
from r8imfs.errors import BadToc, CorruptLayer, RangeUnsupported
from r8imfs.image.toclayer import RangeGets
from r8imfs.oci.config import Layer
from r8imfs.oci.reference import Repository
from r8imfs.registry.client import RegistryClient

log = logging.getLogger("r8imfs.extract")

#: Use the TOC when the kept files are at most this share of the layer's bytes.
TOC_SHARE = 0.5
#: Bytes of a file asked of the TOC reader at once (one ranged GET per run of chunks).
PIECE = 32 * 1024 * 1024

OnFile = Callable[[str, int], None]
WeightsName = Callable[[str], str | None]


class SinkLike(Protocol):
    """``ops.extract.Sink`` (structural: ``ops.extract`` imports this module)."""

    def add(self, name: str, info: tarfile.TarInfo, body: IO[bytes]) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


async def extract_via_toc(
    client: RegistryClient,
    repo: Repository,
    layer: Layer,
    sink: SinkLike,
    weights_name: WeightsName,
    on_file: OnFile | None = None,
) -> list[str] | None:
    """The names written from ``layer`` through its TOC, or None: stream it instead."""
    desc = layer.descriptor
    try:
        if toc_kind(desc.annotations) is None:
            return None
    except BadToc as exc:
        log.warning("layer %d: TOC refused (%s); streaming it instead", layer.index, exc)
        return None
    gets = RangeGets(client, repo, desc.digest, desc.size)
    job = _TocExtract(gets, layer, sink, weights_name, on_file)
    return await _threads.run_sync(job.run)


class _TocExtract:
    """Worker-thread side: load the TOC, decide, copy the kept files out."""

    def __init__(
        self,
        gets: RangeGets,
        layer: Layer,
        sink: SinkLike,
        weights_name: WeightsName,
        on_file: OnFile | None,
    ) -> None:
        self._gets = gets
        self._layer = layer
        self._sink = sink
        self._weights_name = weights_name
        self._on_file = on_file

    def run(self) -> list[str] | None:
        what = f"layer {self._layer.index} ({self._layer.descriptor.digest})"
        try:
            index = load_toc(self._gets, self._layer.descriptor.annotations)
        except (BadToc, RangeUnsupported) as exc:
            log.warning("%s: TOC not used (%s); streaming it instead", what, exc)
            return None
        if index is None:
            return None
        kept = self._kept(index)
        if sum(e.size for _, e in kept) > TOC_SHARE * index.size:
            return None  # most of the layer: one stream is faster than chunk GETs
        try:
            with TocReader(self._gets, index) as reader:
                names = [self._copy(reader, name, e) for name, e in kept]
        except CorruptLayer as exc:  # ChunkMismatch is a DigestMismatch, not this
            self._sink.abort()
            exc.message = f"{what}: {exc.message}"
            raise
        except BaseException:
            self._sink.abort()
            raise
        self._sink.commit()
        return names

    def _kept(self, index: TocIndex) -> list[tuple[str, Entry]]:
        out = []
        for e in index.entries:
            name = self._weights_name(e.path)
            if name is not None and e.kind is Kind.FILE and not e.sparse:
                out.append((name, e))
        return out

    def _copy(self, reader: TocReader, name: str, e: Entry) -> str:
        info = tarfile.TarInfo(e.path)
        info.size, info.mode, info.mtime, info.uid, info.gid = e.size, e.mode, e.mtime, e.uid, e.gid
        self._sink.add(name, info, cast(IO[bytes], _Body(reader, e)))
        if self._on_file:
            self._on_file(name, e.size)
        return name


class _Body:
    """A file's bytes from the TOC reader, verified chunk by chunk, read in order."""

    def __init__(self, reader: TocReader, entry: Entry) -> None:
        self._reader = reader
        self._entry = entry
        self._pos = 0  # of the file, read from the reader so far
        self._buf = memoryview(b"")

    def read(self, size: int = -1) -> memoryview:
        if not self._buf and self._pos < self._entry.size:
            self._buf = memoryview(read_entry(self._reader, self._entry, self._pos, PIECE))
            self._pos += len(self._buf)
        n = len(self._buf) if size < 0 else size
        out, self._buf = self._buf[:n], self._buf[n:]
        return out
