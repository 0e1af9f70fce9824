"""The codec table: every layer format the media types name has one entry, and
each entry's pieces agree with each other (index, reader, one-pass inflate)."""

from __future__ import annotations

import gzip
import io
from concurrent.futures import ThreadPoolExecutor

import pytest
import zstandard

from r8imfs.engine.codecs.table import CODECS, Compression, codec_for
from r8imfs.engine.codecs.zstdwrite import write_seekable
from r8imfs.engine.readat import BytesReadAt, read_entry
from r8imfs.errors import UnsupportedMediaType
from r8imfs.oci import mediatypes as mt
from tests.helpers.tars import M, make_tar

MEMBERS = [
    M("d", "etc"),
    M("f", "etc/hosts", b"127.0.0.1 localhost\n"),
    M("f", "big", b"x" * 300_000),
]
TAR = make_tar(MEMBERS)


def _seekable(tar: bytes) -> bytes:
    out = io.BytesIO()
    write_seekable(io.BytesIO(tar), out, frame_size=64 * 1024)
    return out.getvalue()


BLOBS = {
    Compression.GZIP: gzip.compress(TAR, mtime=0),
    Compression.ZSTD: _seekable(TAR),
    Compression.NONE: TAR,
}


def test_every_compression_the_media_types_name_has_a_codec() -> None:
    assert set(mt.LAYER_COMPRESSION.values()) == set(Compression) == set(CODECS)
    for media_type, compression in mt.LAYER_COMPRESSION.items():
        assert codec_for(media_type).compression is compression


def test_unknown_media_type_is_refused() -> None:
    with pytest.raises(UnsupportedMediaType, match=r"tar\+bzip2"):
        codec_for("application/vnd.oci.image.layer.v1.tar+bzip2")


@pytest.mark.parametrize("compression", list(Compression))
def test_index_reader_and_inflate_agree(compression: Compression) -> None:
    codec = CODECS[compression]
    blob = BLOBS[compression]
    built = codec.build_index(BytesReadAt(blob), len(blob))
    assert built.uncompressed_size == len(TAR)
    by_path = {e.path: e for e in built.entries}
    reader = codec.open_reader(BytesReadAt(blob), built.checkpoints, len(blob), len(TAR))
    try:
        assert read_entry(reader, by_path["etc/hosts"], 0, 100) == b"127.0.0.1 localhost\n"
        assert read_entry(reader, by_path["big"], 299_990, 100) == b"x" * 10
        cached = reader.cached(0, 10)
        assert cached is None or cached == TAR[:10]
    finally:
        reader.close()
    assert codec.inflate(io.BytesIO(blob)).read() == TAR
    chunks = (memoryview(blob)[i : i + 7_000] for i in range(0, len(blob), 7_000))
    with ThreadPoolExecutor(2) as pool:
        assert b"".join(codec.decode_chunks(chunks, pool)) == TAR


@pytest.mark.parametrize(
    ("compression", "blob", "expected"),
    [
        (Compression.GZIP, gzip.compress(TAR, mtime=0), True),
        (Compression.NONE, TAR, False),
        (Compression.ZSTD, _seekable(TAR), False),  # seek table: no pass
        (Compression.ZSTD, zstandard.ZstdCompressor().compress(TAR), True),
    ],
)
def test_needs_full_pass(compression: Compression, blob: bytes, expected: bool) -> None:
    codec = CODECS[compression]
    assert codec.needs_full_pass(BytesReadAt(blob), len(blob)) is expected
    assert codec.full_pass_known in (None, expected)


@pytest.mark.parametrize(
    ("compression", "docker", "media_type"),
    [
        ("gzip", False, mt.OCI_LAYER_GZIP),
        ("gzip", True, mt.DOCKER_LAYER_GZIP),
        ("zstd", True, mt.OCI_LAYER_ZSTD),
        ("none", False, mt.OCI_LAYER),
        ("none", True, "application/vnd.docker.image.rootfs.diff.tar"),
    ],
)
def test_new_layer_type_round_trips(compression: str, docker: bool, media_type: str) -> None:
    assert mt.new_layer_type(compression, docker=docker) == media_type
    assert mt.layer_compression(media_type) == compression
