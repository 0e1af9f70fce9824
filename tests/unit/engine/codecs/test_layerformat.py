"""``layerformat``: a layer's format from its descriptor and the TOC found for it."""

from __future__ import annotations

import gzip
import io

import pytest

from r8imfs.engine.codecs import ztoc, ztocbuild
from r8imfs.engine.codecs.layerformat import SOCI_ZTOC, TOC_FORMATS, Toc, choose
from r8imfs.engine.codecs.table import CODECS, Compression
from r8imfs.engine.readat import BytesReadAt, read_entry
from r8imfs.errors import CorruptLayer, UnsupportedMediaType
from r8imfs.oci import mediatypes as mt
from tests.helpers.tars import MiB, big_tar


@pytest.fixture(scope="module")
def layer() -> tuple[bytes, bytes, bytes]:
    tar = big_tar(2 * MiB, seed=3)
    blob = gzip.compress(tar, mtime=0)
    return tar, blob, ztoc.encode(ztocbuild.build_gzip(io.BytesIO(blob), span_size=256 * 1024))


def _toc(data: bytes, kind: str = SOCI_ZTOC) -> Toc:
    return Toc(kind, data, "sha256:" + "0" * 64, "SOCI v2 index test", 256 * 1024)


def test_choose_pairs_the_codec_with_the_toc(layer: tuple[bytes, bytes, bytes]) -> None:
    plain = choose(mt.OCI_LAYER_GZIP, None)
    assert plain.codec is CODECS[Compression.GZIP]
    assert plain.toc is None and plain.toc_format is None
    found = choose(mt.DOCKER_LAYER_GZIP, _toc(layer[2]))
    assert found.toc_format is TOC_FORMATS[SOCI_ZTOC]
    assert choose(mt.OCI_LAYER_GZIP, _toc(layer[2], "no-such-kind")).toc is None
    with pytest.raises(UnsupportedMediaType):
        choose("application/vnd.example.not-a-layer", _toc(layer[2]))


def test_a_ztoc_layer_lists_and_reads_without_the_body(
    layer: tuple[bytes, bytes, bytes],
) -> None:
    tar, blob, data = layer
    fmt = choose(mt.OCI_LAYER_GZIP, _toc(data))
    assert fmt.toc is not None and fmt.toc_format is not None
    loaded = fmt.toc_format.load(fmt.toc, len(blob))
    assert loaded.uncompressed_size <= len(tar)
    files = [e for e in loaded.entries if e.size > 1000]
    reader = loaded.open_reader(BytesReadAt(blob), name="layer 0", pool=None)
    try:
        for e in files[:5]:
            assert read_entry(reader, e, 0, e.size) == tar[e.data_offset : e.data_offset + e.size]
    finally:
        reader.close()


def test_a_loaded_ztoc_opens_readers_only_on_its_own_layer(
    layer: tuple[bytes, bytes, bytes],
) -> None:
    """The reader takes the spans ``load`` validated, and still refuses another blob."""
    _, blob, data = layer
    loaded = TOC_FORMATS[SOCI_ZTOC].load(_toc(data), len(blob))
    reader = loaded.open_reader(BytesReadAt(blob), name="layer 0", pool=None)
    reader.close()
    with pytest.raises(ztoc.InvalidZtoc, match="blob of"):
        loaded.open_reader(BytesReadAt(blob[:-1]), name="layer 0", pool=None)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda d, n: (d[:100], n), "malformed zTOC"),
        (lambda d, n: (d, n + 1), "is for a blob of"),
    ],
)
def test_an_unusable_ztoc_is_a_corrupt_layer(
    layer: tuple[bytes, bytes, bytes], mangle: object, message: str
) -> None:
    _, blob, data = layer
    bad, size = mangle(data, len(blob))  # type: ignore[operator]
    fmt = choose(mt.OCI_LAYER_GZIP, _toc(bad))
    assert fmt.toc is not None and fmt.toc_format is not None
    with pytest.raises(CorruptLayer, match=message):
        fmt.toc_format.load(fmt.toc, size)


def test_block_size_fits_the_spans(layer: tuple[bytes, bytes, bytes]) -> None:
    _, blob, data = layer
    fmt = choose(mt.OCI_LAYER_GZIP, _toc(data))
    assert fmt.toc is not None and fmt.toc_format is not None
    loaded = fmt.toc_format.load(fmt.toc, len(blob))
    block = loaded.block_size
    mean = len(blob) // len(loaded.spans)  # type: ignore[attr-defined]
    assert block & (block - 1) == 0  # a power of two
    assert 128 * 1024 <= block <= 4 * MiB
    assert block <= max(mean // 4, 128 * 1024) < 2 * block or block == 128 * 1024


def test_ztoc_entries_match_the_engines_own_index() -> None:
    """A layer served from its zTOC lists what indexing it here would list."""
    from r8imfs.engine.tarindex import index_stream
    from tests.helpers.tars import M, make_tar

    tar = make_tar(
        [
            M("d", "usr", mode=0o755),
            M("f", "usr/a", b"one" * 1000, pax={"SCHILY.xattr.user.k": "v"}),
            M("h", "usr/b", link="usr/a"),
            M("l", "usr/c", link="a"),
            M("f", "usr/.wh.gone", b""),
            M("d", "opt"),
            M("f", "opt/.wh..wh..opq", b""),
            M("f", "usr/a", b"later"),
        ]
    )
    blob = gzip.compress(tar, mtime=0)
    data = ztoc.encode(ztocbuild.build_gzip(io.BytesIO(blob), span_size=256 * 1024))
    fmt = choose(mt.OCI_LAYER_GZIP, _toc(data))
    assert fmt.toc is not None and fmt.toc_format is not None
    ours = fmt.toc_format.load(fmt.toc, len(blob)).entries
    theirs, _ = index_stream(iter([tar]))

    fields = ("path", "kind", "mode", "uid", "gid", "mtime", "size", "linkname", "data_offset")

    def key(e: object) -> tuple[object, ...]:
        return tuple(getattr(e, k) for k in fields)

    assert sorted(map(key, ours)) == sorted(map(key, theirs))
    assert {e.path: e.xattrs for e in ours} == {e.path: e.xattrs for e in theirs}
