"""A layer's *format*: chosen from its descriptor and what the registry offers.

``codecs.table`` answers "how is this blob compressed" (``Compression`` →
``Codec``): enough when every index is built here, by reading the layer.
A layer may also come with a table of contents made by someone else, which
makes it readable at random without reading it first: a SOCI zTOC (found
beside the image, through its SOCI index), and soon an eStargz or
zstd:chunked TOC (found through the layer's own annotations). This module
is the step before the codec: ``choose(media_type, toc)`` gives a
``LayerFormat``, the codec plus, when a TOC was found, the ``TocFormat``
that turns it into entries and a reader.

A ``TocFormat`` is one entry of ``TOC_FORMATS``, keyed by ``Toc.kind``:

* ``load(toc, layer_size)`` checks the TOC against the layer (sizes, offsets,
  names) and returns a ``TocLayer`` (its ``entries`` and uncompressed size);
  a TOC that fails raises a ``CorruptLayer`` (the caller logs one line and
  indexes the layer itself, as if there were no TOC);
* ``TocLayer.open_reader(blob)`` gives ``pread`` on the uncompressed tar over
  the *compressed* blob, fetching and checking only what a read needs. Bytes
  that fail their check (a SOCI span digest) raise a ``DigestMismatch`` for
  every read that needs them (EIO through FUSE, logged once per open file by
  the handler): never wrong bytes. The layer is not re-indexed then: the
  blob itself is wrong, and indexing it would read the same bytes.

The async side finds TOCs (``image.tocs``) and hands the bytes here; what is
here never touches the network. Adding eStargz or zstd:chunked is a
``TocFormat`` in its own module and one line in ``TOC_FORMATS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from r8imfs import _gc
from r8imfs.engine.codecs import socireader, ztoc
from r8imfs.engine.codecs.table import Codec, Compression, codec_for
from r8imfs.engine.codecs.units import Decoder, Unit, UnitTable
from r8imfs.engine.entry import Entry
from r8imfs.engine.readat import LayerReader, ReadAt
from r8imfs.errors import CorruptLayer, UnsafeLayer

SOCI_ZTOC = "soci-ztoc"


@dataclass(frozen=True, slots=True)
class Toc:
    """A TOC found for a layer: its bytes (already checked against the digest that
    named them) and where they came from, for messages and ``r8imfs layers``."""

    kind: str  # a key of TOC_FORMATS
    data: bytes
    digest: str
    source: str  # e.g. "SOCI v2 index sha256:…"
    span_size: int | None = None


class TocLayer(Protocol):
    """A layer as its TOC describes it, validated against the layer."""

    @property
    def entries(self) -> Sequence[Entry]: ...

    @property
    def uncompressed_size(self) -> int: ...

    @property
    def block_size(self) -> int:
        """The fetch size that suits its reads (the blob cache's block for it)."""
        ...

    def units(self, *, name: str) -> tuple[UnitTable, Decoder] | None:
        """Its independently fetchable pieces (spans, chunks), each with a check, for
        ``image.fetchplan.UnitReader``; None if it has none (``open_reader`` serves)."""
        ...

    def open_reader(self, blob: ReadAt, *, name: str, pool: Executor | None) -> LayerReader:
        """``pread`` on the uncompressed tar, over the compressed ``blob``.

        Reads happen in the calling thread (a ``ReadAt`` over the trio blob
        cache must be called from a trio-started worker thread); ``pool``
        runs only leaf work (hashing, inflating).
        """
        ...


class TocFormat(Protocol):
    kind: str
    #: how ``r8imfs layers`` names it
    label: str

    def load(self, toc: Toc, layer_size: int) -> TocLayer:
        """The layer as ``toc`` describes it; a ``CorruptLayer`` if the TOC is unusable."""
        ...


# -- SOCI --------------------------------------------------------------------------


#: bounds of ``ZtocLayer.block_size``
MIN_BLOCK = 128 * 1024
MAX_BLOCK = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ZtocLayer:
    z: ztoc.Ztoc
    entries: tuple[Entry, ...]
    span_size: int | None
    spans: ztoc.Spans

    @property
    def uncompressed_size(self) -> int:
        return self.z.uncompressed_archive_size

    @property
    def block_size(self) -> int:
        """A power of two near a quarter of the mean compressed span: fetching a
        span then costs at most a quarter more than the span (a 4 MiB span of
        small files is ~2 MiB gzip, of bf16 weights ~3.7 MiB)."""
        mean = self.z.compressed_archive_size // max(1, len(self.spans))
        block = 1 << max(0, (mean // 4).bit_length() - 1)
        return max(MIN_BLOCK, min(MAX_BLOCK, block))

    def units(self, *, name: str) -> tuple[UnitTable, Decoder] | None:
        """One unit per span; decoding checks the span's sha256 before inflating it."""
        s, usize = self.spans, self.uncompressed_size
        # spans starting past the tar's end (checkpoints in its trailing zeros) are
        # never read; the last one read is cut at the tar's end
        found = [
            Unit(i, s.cstart[i], s.cend[i], s.ustart[i], min(s.uend[i], usize) - s.ustart[i])
            for i in range(len(s))
            if s.ustart[i] < usize or i == 0
        ]
        try:
            # ``decode`` checks each span
            table = UnitTable(found, usize, verified=True, compression=Compression.GZIP)
        except CorruptLayer:
            return None  # spans that do not tile the tar: the span reader copes
        z = self.z

        def decode(unit: Unit, data: bytes | memoryview) -> bytes | bytearray:
            out = socireader.verify_and_inflate(z, s, unit.index, data, name)
            return out if len(out) == unit.usize else out[: unit.usize]

        return table, decode

    def open_reader(self, blob: ReadAt, *, name: str, pool: Executor | None) -> LayerReader:
        # validated by ``ZtocFormat.load`` against this layer's size: not again
        return socireader.SociLayer(
            self.z, blob, span_size=self.span_size, name=name, pool=pool, spans=self.spans
        )


class ZtocFormat:
    """SOCI: a zTOC per layer (gzip or plain tar), from the image's SOCI index."""

    kind = SOCI_ZTOC
    label = "zTOC"

    def load(self, toc: Toc, layer_size: int) -> ZtocLayer:
        with _gc.paused():  # a burst of long-lived objects (r8imfs._gc)
            z = ztoc.decode(toc.data)
            spans = ztoc.validate(z, layer_size, toc.span_size)
            try:
                entries = tuple(socireader.entries(z))
            except UnsafeLayer as exc:  # normalise_path: a climbing name
                raise ztoc.InvalidZtoc(f"zTOC entry name: {exc}") from exc
        return ZtocLayer(z, entries, toc.span_size, spans)


#: The table of TOC formats, by ``Toc.kind``.
TOC_FORMATS: dict[str, TocFormat] = {SOCI_ZTOC: ZtocFormat()}


@dataclass(frozen=True, slots=True)
class LayerFormat:
    """How one layer is indexed and read: its codec, and a TOC when one was found."""

    codec: Codec
    toc: Toc | None = None

    @property
    def toc_format(self) -> TocFormat | None:
        return TOC_FORMATS.get(self.toc.kind) if self.toc is not None else None


def choose(media_type: str, toc: Toc | None) -> LayerFormat:
    """The format of a layer: ``UnsupportedMediaType`` if it has no codec; a TOC of
    an unknown kind is ignored (local indexing)."""
    codec = codec_for(media_type)
    if toc is not None and toc.kind not in TOC_FORMATS:
        toc = None
    return LayerFormat(codec, toc)
