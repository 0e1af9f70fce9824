"""``SpanInflater``: one ordered pass over a gzip layer, its spans inflated on a pool."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from typing import IO, cast

import pytest

from r8imfs.engine.codecs import socireader, ztoc, ztocbuild
from r8imfs.engine.codecs.decompress import HashingReader
from r8imfs.engine.codecs.spanstream import BlobSizeMismatch, SpanInflater, ZtocMismatch
from r8imfs.errors import CorruptLayer
from tests.helpers.tars import M, MiB, big_tar, make_tar, payload

SPAN = 128 * 1024


@pytest.fixture(scope="module")
def layer() -> tuple[bytes, bytes, ztoc.Ztoc, ztoc.Spans]:
    tar = big_tar(3 * MiB, seed=4)
    blob = gzip.compress(tar, mtime=0)
    z = ztocbuild.build_gzip(io.BytesIO(blob), span_size=SPAN)
    return tar, blob, z, ztoc.validate(z, len(blob))


def _read_all(f: SpanInflater, size: int) -> bytes:
    out = bytearray()
    while piece := f.read(size):
        out += piece
    return bytes(out)


@pytest.mark.parametrize(("window", "size"), [(1, 7_000), (3, 1 << 20), (8, -1)])
def test_the_tar_comes_out_in_order(
    layer: tuple[bytes, bytes, ztoc.Ztoc, ztoc.Spans], window: int, size: int
) -> None:
    tar, blob, z, spans = layer
    assert len(spans) > 10
    hashed = HashingReader(io.BytesIO(blob))
    with ThreadPoolExecutor(2) as pool:
        inflater = SpanInflater(cast(IO[bytes], hashed), z, spans, pool=pool, window=window)
        out = _read_all(inflater, size)
    # the tar up to where Go's reader stops; every byte of the blob was read (and hashed)
    assert out == tar[: len(out)] and len(out) == z.uncompressed_archive_size
    assert hashed.hash.hexdigest() == hashlib.sha256(blob).hexdigest()


def test_readinto_works_for_buffered_readers(
    layer: tuple[bytes, bytes, ztoc.Ztoc, ztoc.Spans],
) -> None:
    tar, blob, z, spans = layer
    with ThreadPoolExecutor(2) as pool:
        f = io.BufferedReader(SpanInflater(io.BytesIO(blob), z, spans, pool=pool))
        assert f.read(1000) == tar[:1000]
        assert f.read(SPAN * 3) == tar[1000 : 1000 + SPAN * 3]


def test_a_corrupted_span_fails_its_digest(
    layer: tuple[bytes, bytes, ztoc.Ztoc, ztoc.Spans],
) -> None:
    tar, blob, z, spans = layer
    bad = bytearray(blob)
    bad[spans.cstart[5] + 100] ^= 0x40
    with ThreadPoolExecutor(2) as pool:
        f = SpanInflater(io.BytesIO(bytes(bad)), z, spans, pool=pool, name="layer 1")
        good = b"".join(f.read(-1) for _ in range(5))  # a span per read
        assert good == tar[: spans.uend[4]]  # the spans before it are fine
        with pytest.raises(socireader.SpanDigestMismatch, match="layer 1: span 5 "):
            _read_all(f, -1)


def test_a_blob_cut_short_is_an_error(layer: tuple[bytes, bytes, ztoc.Ztoc, ztoc.Spans]) -> None:
    _, blob, z, spans = layer
    with ThreadPoolExecutor(2) as pool:
        f = SpanInflater(io.BytesIO(blob[: len(blob) // 2]), z, spans, pool=pool)
        with pytest.raises(CorruptLayer, match="the blob ends at"):
            _read_all(f, -1)


def test_uncompressed_layer() -> None:
    tar = make_tar([M("f", f"f{i}", payload(50_000, seed=i)) for i in range(20)])
    z = ztocbuild.build_tar(io.BytesIO(tar), span_size=SPAN)
    spans = ztoc.validate(z, len(tar))
    with ThreadPoolExecutor(2) as pool:
        assert _read_all(SpanInflater(io.BytesIO(tar), z, spans, pool=pool), 9_999) == tar


def _with_checkpoint(z: ztoc.Ztoc, k: int, **change: object) -> ztoc.Ztoc:
    """``z`` with checkpoint ``k`` altered (its span digests left as they are)."""
    _, cps = ztoc.decode_gzip_zinfo(z.checkpoints)
    cps[k] = dataclasses.replace(cps[k], **change)  # type: ignore[arg-type]
    return dataclasses.replace(z, checkpoints=ztoc.encode_gzip_zinfo(SPAN, cps))


def test_decoded_hands_on_whole_spans_and_every_byte_is_seen(
    layer: tuple[bytes, bytes, ztoc.Ztoc, ztoc.Spans],
) -> None:
    tar, blob, z, spans = layer
    seen = hashlib.sha256()
    with ThreadPoolExecutor(2) as pool:
        f = SpanInflater(io.BytesIO(blob), z, spans, pool=pool, on_bytes=seen.update)
        pieces = list(f.decoded())
    assert [len(p) for p in pieces] == [
        e - s for s, e in zip(spans.ustart, spans.uend, strict=True)
    ]
    assert b"".join(pieces) == tar[: z.uncompressed_archive_size]
    assert seen.hexdigest() == hashlib.sha256(blob).hexdigest()


def test_a_window_that_is_not_the_data_is_refused(
    layer: tuple[bytes, bytes, ztoc.Ztoc, ztoc.Spans],
) -> None:
    tar, blob, z, _ = layer
    _, cps = ztoc.decode_gzip_zinfo(z.checkpoints)
    lying = _with_checkpoint(z, 4, window=bytes(reversed(cps[4].window)))
    spans = ztoc.validate(lying, len(blob))
    with ThreadPoolExecutor(2) as pool:
        f = SpanInflater(io.BytesIO(blob), lying, spans, pool=pool, name="layer 1")
        with pytest.raises(ZtocMismatch, match="checkpoint 4's window is not the 32 KiB"):
            _read_all(f, -1)


def test_a_checkpoint_off_its_block_boundary_is_refused(
    layer: tuple[bytes, bytes, ztoc.Ztoc, ztoc.Spans],
) -> None:
    _, blob, z, _ = layer
    _, cps = ztoc.decode_gzip_zinfo(z.checkpoints)
    lying = _with_checkpoint(z, 3, bits=(cps[3].bits + 3) % 8)
    spans = ztoc.validate(lying, len(blob))
    with ThreadPoolExecutor(2) as pool:
        f = SpanInflater(io.BytesIO(blob), lying, spans, pool=pool, name="layer 1")
        with pytest.raises(ZtocMismatch, match="layer 1: span [23]"):
            _read_all(f, -1)


def test_a_blob_longer_than_its_ztoc_is_an_error(
    layer: tuple[bytes, bytes, ztoc.Ztoc, ztoc.Spans],
) -> None:
    _, blob, z, spans = layer
    with ThreadPoolExecutor(2) as pool:
        f = SpanInflater(io.BytesIO(blob + b"\0" * 5), z, spans, pool=pool)
        with pytest.raises(BlobSizeMismatch, match="is 5 bytes longer|bytes long, its zTOC"):
            _read_all(f, -1)
        g = SpanInflater(io.BytesIO(blob + b"\0"), z, spans, pool=pool)
        next(iter(g.decoded()))
        with pytest.raises(BlobSizeMismatch):
            g.finish()  # stopping early still reads (and measures) the rest


@pytest.mark.parametrize("span", [8 * 1024, 64 * 1024])
def test_members_and_spans_shorter_than_a_window_pass_the_checks(span: int) -> None:
    """Checkpoints across gzip member boundaries (pigz-like), and spans shorter
    than 32 KiB (each window then reaches over several spans)."""
    tar = big_tar(1 * MiB, seed=9)
    cuts = [0, 200_000, 200_001, 650_000, len(tar)]
    blob = b"".join(
        gzip.compress(tar[a:b], compresslevel=level, mtime=0)
        for a, b, level in zip(cuts[:-1], cuts[1:], (6, 1, 0, 9), strict=True)
    )
    z = ztocbuild.build_gzip(io.BytesIO(blob), span_size=span)
    spans = ztoc.validate(z, len(blob))
    assert len(spans) > 10
    with ThreadPoolExecutor(2) as pool:
        f = SpanInflater(io.BytesIO(blob), z, spans, pool=pool)
        out = b"".join(f.decoded())
    assert out == tar[: len(out)] and len(out) >= z.uncompressed_archive_size
