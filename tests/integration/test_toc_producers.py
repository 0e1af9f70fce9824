"""The TOC reader on layers from independent producers, and on corrupted ones.

For each producer the ground truth is the layer itself read as a plain
stream: decompressed whole (zstd/gzip libraries) and indexed by ``tarindex``.
The TOC reader must give the same entries and the same file bytes, having
read only the TOC to list them and only the needed chunks to read a file.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil

import pytest
import zstandard

from r8imfs.engine.codecs.toc import TocIndex, load_toc
from r8imfs.engine.codecs.tocread import TocReader
from r8imfs.engine.entry import Entry, Kind
from r8imfs.engine.readat import BytesReadAt, CountingReadAt, FileReadAt, read_entry
from r8imfs.engine.tarindex import index_seekable
from r8imfs.errors import CorruptLayer, DigestMismatch
from tests.helpers.tocproducers import (
    Layer,
    containerd,
    ctr_remote_convert,
    skopeo_zstd_chunked,
    source_tar,
)

FIELDS = ("kind", "mode", "uid", "gid", "mtime", "size", "linkname", "xattrs")


@pytest.fixture(scope="module")
def tar() -> bytes:
    return source_tar()


@pytest.fixture(scope="module")
def producers(tar: bytes, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Layer]:
    """Every producer available here; missing tools are reported by the tests."""
    work = tmp_path_factory.mktemp("producers")
    out: dict[str, Layer] = {}
    if shutil.which("skopeo"):
        out["skopeo"] = skopeo_zstd_chunked(work / "skopeo", tar)
    if shutil.which("ctr-remote") and shutil.which("containerd") and os.geteuid() == 0:
        with containerd(work / "ctd") as ctr:
            out["estargz"] = ctr_remote_convert(ctr, work, tar, "--estargz")
            out["stargz-zstdchunked"] = ctr_remote_convert(ctr, work, tar, "--zstdchunked")
    return out


EXPECTED_KIND = {
    "skopeo": ("zstd:chunked-legacy", "zstd"),
    "estargz": ("estargz", "gzip"),
    "stargz-zstdchunked": ("zstd:chunked-legacy", "zstd"),
}


def _layer(producers: dict[str, Layer], name: str) -> Layer:
    if name not in producers:
        pytest.skip(f"{name}: producer not installed (scripts/setup.sh installs it) or not root")
    return producers[name]


def plain_tar(layer: Layer) -> bytes:
    data = layer.blob.read_bytes()
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
    return reader.read()


def truth(layer: Layer) -> tuple[dict[str, Entry], dict[str, bytes]]:
    """Entries and file bodies of the layer read as a plain stream."""
    tar = plain_tar(layer)
    entries = {e.path: e for e in index_seekable(io.BytesIO(tar), len(tar))}
    entries.pop("stargz.index.json", None)  # the eStargz TOC's own tar member
    bodies = {
        e.path: tar[e.data_offset : e.data_offset + e.size]
        for e in entries.values()
        if e.kind is Kind.FILE
    }
    return entries, bodies


@pytest.mark.parametrize("name", sorted(EXPECTED_KIND))
def test_producer_layers_list_and_read_through_their_toc(
    producers: dict[str, Layer], name: str
) -> None:
    layer = _layer(producers, name)
    reads = CountingReadAt(FileReadAt(layer.blob))
    index = load_toc(reads, layer.annotations)
    assert index is not None
    assert (index.kind, index.codec) == EXPECTED_KIND[name]
    assert reads.calls <= 2 and reads.bytes_read < reads.size // 5
    entries, bodies = truth(layer)
    got = {e.path: e for e in index.entries}
    assert sorted(got) == sorted(entries)
    for path, e in entries.items():
        assert tuple(getattr(got[path], f) for f in FIELDS) == tuple(
            getattr(e, f) for f in FIELDS
        ), path
    with TocReader(reads, index) as reader:
        for path, body in bodies.items():
            assert read_entry(reader, got[path], 0, len(body)) == body, path
            assert read_entry(reader, got[path], 5 * 1024 * 1024, 999) == body[5242880:5243879]


@pytest.mark.parametrize("name", sorted(EXPECTED_KIND))
def test_a_corrupt_chunk_fails_its_first_read_and_the_rest_still_reads(
    producers: dict[str, Layer], name: str
) -> None:
    layer = _layer(producers, name)
    index = load_toc(FileReadAt(layer.blob), layer.annotations)
    assert index is not None
    big = next(f for f in index.files if f.path == "usr/big.bin")
    chunk = big.chunks[-1]
    blob = bytearray(layer.blob.read_bytes())
    for at in range(chunk.cstart + 20, min(chunk.cend, chunk.cstart + 60)):
        blob[at] ^= 0x5A
    _, bodies = truth(layer)
    with TocReader(BytesReadAt(bytes(blob)), index) as reader:
        # the codec's own checksum (CorruptLayer) or the TOC digest (DigestMismatch)
        with pytest.raises((CorruptLayer, DigestMismatch)):
            reader.read_file(big, chunk.offset, 10)
        with pytest.raises((CorruptLayer, DigestMismatch)):  # refused on a second touch too
            reader.read_file(big, chunk.offset, 10)
        assert reader.read_file(big, 0, 4096) == bodies["usr/big.bin"][:4096]  # other chunk
        for f in index.files:
            if f.path != "usr/big.bin":
                assert reader.read_file(f, 0, f.size) == bodies[f.path], f.path


def test_layer_toc_kinds_are_told_apart(producers: dict[str, Layer]) -> None:
    for name, layer in producers.items():
        index: TocIndex | None = load_toc(FileReadAt(layer.blob), layer.annotations)
        assert index is not None and index.kind == EXPECTED_KIND[name][0], name
