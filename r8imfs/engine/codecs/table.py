"""The one table of layer formats: a ``Compression`` picks a ``Codec``.

Everything the engine does differently per layer format goes through one
``Codec``: how a layer's index is built (``build_index``), how its tar is
read at random (``open_reader`` over the stored checkpoints), how it is
inflated in one sequential pass (``inflate``, for ``extract``, recompression
and decoded copies), whether indexing it costs a pass over the whole
blob (``needs_full_pass``) and whether a SOCI zTOC can describe it
(``ztoc_possible``). Callers ask ``codec_for(media_type)`` (or
``CODECS[compression]``) and never compare compression names.

Adding a format is adding one entry to ``CODECS`` (and its media types to
``r8imfs.oci.mediatypes``). The interface also fits a format that carries a
table of contents (zstd:chunked, eStargz, a SOCI zTOC): its ``build_index``
reads the TOC by range and decodes nothing, so ``full_pass_known`` is False
and ``needs_full_pass`` answers False; its ``checkpoints`` are whatever its
``open_reader`` needs to find a chunk (the TOC's chunk table); and
``decoded_copy`` is False, since there is nothing to gain from keeping the
whole tar decoded.

The ``cached`` fast path is on the reader, not here: every ``LayerReader``
has ``cached(offset, size)``, which answers None when it holds nothing
decoded (``readat.LayerReader``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import IO, Protocol, cast

from r8imfs.engine.codecs.decompress import ChunkReader, GzipInflater, ZstdInflater, chunks_of
from r8imfs.engine.codecs.gzipindex import GzipLayerReader, build_gzip_index
from r8imfs.engine.codecs.plain import PlainLayerReader, build_plain_index
from r8imfs.engine.codecs.units import SpanDigest
from r8imfs.engine.codecs.zstdindex import ZstdLayerReader, build_zstd_index, read_seek_table
from r8imfs.engine.codecs.zstdstream import decode_frames
from r8imfs.engine.entry import Entry
from r8imfs.engine.readat import LayerReader, ReadAt, ScanProgress
from r8imfs.errors import UnsupportedMediaType
from r8imfs.oci.mediatypes import Compression, layer_compression

__all__ = ["CODECS", "BuiltIndex", "Codec", "Compression", "codec_for"]

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class BuiltIndex:
    """What ``Codec.build_index`` found: the tar's entries and how to seek in it."""

    entries: Sequence[Entry]
    #: opaque to everyone but the codec's ``open_reader``; b"" if it needs none
    checkpoints: bytes
    uncompressed_size: int
    #: sha256 of each unit the checkpoints cut (``units.units_for_layer``), when the
    #: pass that built them read the whole blob (gzip); () otherwise
    span_digests: tuple[SpanDigest, ...] = ()


class Codec(Protocol):
    """One layer format. All methods block: call them from a worker thread."""

    @property
    def compression(self) -> Compression: ...

    @property
    def decoded_copy(self) -> bool:
        """Whether a layer may be served from a decoded copy instead of checkpoints."""
        ...

    @property
    def get_size(self) -> int:
        """Compressed bytes per ranged GET of a sequential reader's read-ahead over
        a layer's units (``image.fetchplan``), and how far ahead it reads.

        A GET has fixed costs at both ends (a connection, the registry's
        request handling) that weigh more the faster its units decode: 32 MiB
        rather than 16 took a ``cp`` of 1 GiB through a zstd:chunked mount from
        2.91-3.17 s to 2.78-2.85 s (the test registry 1.2-1.35 -> 1.0 CPU-s;
        interleaved, 3 each). gzip spans inflate at a third of zstd's speed,
        and their GETs wait longer for it: at 32 MiB a SOCI ``cp`` was no
        faster and the daemon's peak RSS went 200-220 -> 280-290 MB.
        """
        ...

    @property
    def ztoc_possible(self) -> bool:
        """Whether a SOCI zTOC can describe a layer of this format (its spans are
        gzip checkpoints, or plain offsets): ``extract`` looks up no SOCI index
        for layers whose codec says no, ``index`` builds no zTOC for them."""
        ...

    @property
    def full_pass_known(self) -> bool | None:
        """``needs_full_pass`` when it needs no read of the blob; None when it does."""
        ...

    def needs_full_pass(self, readat: ReadAt, size: int) -> bool:
        """Whether ``build_index`` decodes the whole blob (at most one small read)."""
        ...

    def build_index(
        self, readat: ReadAt, size: int, *, progress: ScanProgress | None = None
    ) -> BuiltIndex: ...

    def open_reader(
        self, readat: ReadAt, checkpoints: bytes, compressed_size: int, uncompressed_size: int
    ) -> LayerReader:
        """``pread`` on the uncompressed tar, from what ``build_index`` stored."""
        ...

    def inflate(self, raw: IO[bytes]) -> IO[bytes]:
        """The tar stream of a blob read sequentially from ``raw``."""
        ...

    def decode_chunks(
        self, chunks: Iterator[memoryview], pool: Executor
    ) -> Iterator[bytes | memoryview]:
        """The tar stream of a blob given as its chunks in order, in pieces; decoded on
        ``pool`` where the format allows (closing the iterator stops the work)."""
        ...


class GzipCodec:
    """gzip: zran checkpoints from one full pass (``gzipindex``)."""

    compression = Compression.GZIP
    decoded_copy = True
    get_size = 16 * MiB
    ztoc_possible = True
    full_pass_known: bool | None = True

    def needs_full_pass(self, readat: ReadAt, size: int) -> bool:
        return True

    def build_index(
        self, readat: ReadAt, size: int, *, progress: ScanProgress | None = None
    ) -> BuiltIndex:
        gz = build_gzip_index(readat, size=size, progress=progress)
        return BuiltIndex(gz.entries, gz.index_bytes, gz.uncompressed_size, gz.span_digests)

    def open_reader(
        self, readat: ReadAt, checkpoints: bytes, compressed_size: int, uncompressed_size: int
    ) -> LayerReader:
        return GzipLayerReader(readat, checkpoints, uncompressed_size)

    def inflate(self, raw: IO[bytes]) -> IO[bytes]:
        return cast(IO[bytes], GzipInflater(raw))

    def decode_chunks(
        self, chunks: Iterator[memoryview], pool: Executor
    ) -> Iterator[bytes | memoryview]:
        return chunks_of(cast(IO[bytes], GzipInflater(cast(IO[bytes], ChunkReader(chunks)))))


class ZstdCodec:
    """zstd: a frame table, from the seek table at the tail when there is one."""

    compression = Compression.ZSTD
    decoded_copy = True
    get_size = 32 * MiB
    ztoc_possible = False
    full_pass_known: bool | None = None

    def needs_full_pass(self, readat: ReadAt, size: int) -> bool:
        return read_seek_table(readat, size) is None

    def build_index(
        self, readat: ReadAt, size: int, *, progress: ScanProgress | None = None
    ) -> BuiltIndex:
        zs = build_zstd_index(readat, size=size, progress=progress)
        return BuiltIndex(zs.entries, zs.frames.to_bytes(), zs.uncompressed_size)

    def open_reader(
        self, readat: ReadAt, checkpoints: bytes, compressed_size: int, uncompressed_size: int
    ) -> LayerReader:
        return ZstdLayerReader(readat, checkpoints)

    def inflate(self, raw: IO[bytes]) -> IO[bytes]:
        return cast(IO[bytes], ZstdInflater(raw))

    def decode_chunks(
        self, chunks: Iterator[memoryview], pool: Executor
    ) -> Iterator[bytes | memoryview]:
        return decode_frames(chunks, pool)


class PlainCodec:
    """An uncompressed tar: the blob is the tar, headers are hopped."""

    compression = Compression.NONE
    decoded_copy = False
    get_size = 32 * MiB
    ztoc_possible = True
    full_pass_known: bool | None = False

    def needs_full_pass(self, readat: ReadAt, size: int) -> bool:
        return False

    def build_index(
        self, readat: ReadAt, size: int, *, progress: ScanProgress | None = None
    ) -> BuiltIndex:
        return BuiltIndex(build_plain_index(readat, size=size, progress=progress), b"", size)

    def open_reader(
        self, readat: ReadAt, checkpoints: bytes, compressed_size: int, uncompressed_size: int
    ) -> LayerReader:
        return PlainLayerReader(readat, compressed_size)

    def inflate(self, raw: IO[bytes]) -> IO[bytes]:
        return raw

    def decode_chunks(
        self, chunks: Iterator[memoryview], pool: Executor
    ) -> Iterator[bytes | memoryview]:
        return chunks


#: The table: one entry per format.
CODECS: dict[Compression, Codec] = {
    Compression.GZIP: GzipCodec(),
    Compression.ZSTD: ZstdCodec(),
    Compression.NONE: PlainCodec(),
}


def codec_for(media_type: str) -> Codec:
    """The codec of a layer media type; ``UnsupportedMediaType`` if there is none."""
    compression = layer_compression(media_type)
    if compression is None or compression not in CODECS:
        raise UnsupportedMediaType(
            f"layer media type {media_type!r} is not a tar, tar+gzip or tar+zstd layer",
            hint="r8imfs reads tar layers: plain, gzip or zstd",
        )
    return CODECS[compression]
