"""TOC chunks and SOCI spans as fetch units: each decodes alone and is checked first.

``tocread.chunk_units`` and ``ZtocLayer.units`` hand a TOC layer to the
parallel fetch scheduler (``image.fetchplan.UnitReader``). Checked here: the
units tile the layer's stream and decode, each from exactly its own
compressed bytes, to what the serial readers give; a flipped byte in one unit
fails that unit's check (never wrong bytes) and no other.
"""

from __future__ import annotations

import gzip
import io

import pytest

from r8imfs.engine.codecs import ztoc, ztocbuild
from r8imfs.engine.codecs.layerformat import SOCI_ZTOC, TOC_FORMATS, Toc
from r8imfs.engine.codecs.socireader import SpanDigestMismatch
from r8imfs.engine.codecs.toc import load_toc
from r8imfs.engine.codecs.tocread import ChunkMismatch, TocReader, chunk_units
from r8imfs.engine.codecs.units import Decoder, UnitTable
from r8imfs.engine.readat import BytesReadAt
from r8imfs.errors import CorruptLayer
from tests.helpers.tars import MiB, big_tar, make_tar
from tests.unit.engine.codecs.test_zstdchunked import chunked, members


def _decode_all(table: UnitTable, decode: Decoder, blob: bytes) -> bytes:
    return b"".join(decode(u, memoryview(blob)[u.cstart : u.cend]) for u in table)


@pytest.fixture(scope="module")
def toc_layer() -> tuple[bytes, TocReader]:
    blob, result = chunked(make_tar(members()))
    index = load_toc(BytesReadAt(blob), result.annotations)
    assert index is not None
    return blob, TocReader(BytesReadAt(blob), index, threads=1)


def test_chunk_units_decode_to_the_verified_stream(toc_layer: tuple[bytes, TocReader]) -> None:
    blob, reader = toc_layer
    found = chunk_units(reader.index)
    assert found is not None
    table, decode = found
    assert table.uncompressed_size == reader.size and table.verified
    assert table.compression == reader.index.codec == "zstd"
    assert len(table) > len(reader.index.files)  # the 6-chunk file gives 6 units
    assert _decode_all(table, decode, blob) == reader.pread(0, reader.size)


def test_a_flipped_byte_fails_its_own_chunk_only(toc_layer: tuple[bytes, TocReader]) -> None:
    blob, reader = toc_layer
    found = chunk_units(reader.index)
    assert found is not None
    table, decode = found
    victim = max(table, key=lambda u: u.csize)
    bad = bytearray(blob)
    bad[victim.cend - 5] ^= 0xFF  # in the frame's last block (or its checksum)
    with pytest.raises((ChunkMismatch, CorruptLayer)):
        decode(victim, memoryview(bad)[victim.cstart : victim.cend])
    for u in table:
        if u.index != victim.index:
            decode(u, memoryview(bytes(bad))[u.cstart : u.cend])


def test_chunks_out_of_blob_order_give_no_units(toc_layer: tuple[bytes, TocReader]) -> None:
    _, reader = toc_layer
    index = reader.index
    swapped = type(index)(
        index.kind,
        index.codec,
        index.toc_digest,
        index.entries,
        tuple(reversed(index.files)),
        index.size,
        index.data_end,
        index.starts,
    )
    assert chunk_units(swapped) is None


@pytest.fixture(scope="module")
def soci_layer() -> tuple[bytes, bytes, bytes]:
    tar = big_tar(3 * MiB, seed=5)
    blob = gzip.compress(tar, mtime=0)
    return tar, blob, ztoc.encode(ztocbuild.build_gzip(io.BytesIO(blob), span_size=256 * 1024))


def _spans(layer: tuple[bytes, bytes, bytes]) -> tuple[UnitTable, Decoder]:
    _, blob, data = layer
    toc = Toc(SOCI_ZTOC, data, "sha256:" + "0" * 64, "test", 256 * 1024)
    loaded = TOC_FORMATS[SOCI_ZTOC].load(toc, len(blob))
    found = loaded.units(name="layer 0")
    assert found is not None and found[0].verified  # each span checked against the zTOC
    assert found[0].compression == "gzip"  # deflate: the mount reads ahead in smaller GETs
    return found


def test_span_units_inflate_to_the_tar(soci_layer: tuple[bytes, bytes, bytes]) -> None:
    tar, blob, _ = soci_layer
    table, decode = _spans(soci_layer)
    assert len(table) > 4
    assert table.uncompressed_size <= len(tar)
    assert _decode_all(table, decode, blob) == tar[: table.uncompressed_size]


def test_a_flipped_byte_fails_its_span_before_inflating(
    soci_layer: tuple[bytes, bytes, bytes],
) -> None:
    _, blob, _ = soci_layer
    table, decode = _spans(soci_layer)
    u = table[2]
    bad = bytearray(blob[u.cstart : u.cend])
    bad[len(bad) // 2] ^= 0x01
    with pytest.raises(SpanDigestMismatch):
        decode(u, memoryview(bytes(bad)))
    decode(table[3], memoryview(blob)[table[3].cstart : table[3].cend])
