from __future__ import annotations

import gzip
import hashlib
import io
import random
import threading
from pathlib import Path

import indexed_gzip
import pytest

from r8imfs.engine.codecs.gzipindex import (
    GzipLayerReader,
    build_gzip_index,
    index_uncompressed_size,
)
from r8imfs.engine.codecs.units import span_units, zran_checkpoints
from r8imfs.engine.indexdb import load_or_build
from r8imfs.engine.readat import BlobFile, BytesReadAt, CountingReadAt, FileReadAt
from r8imfs.engine.tarindex import index_seekable
from r8imfs.errors import CorruptLayer, TransportError
from r8imfs.oci import mediatypes as mt
from tests.helpers.tars import MiB, big_tar, gzip_members

SPACING = 512 * 1024  # small, so a few MiB of layer has many checkpoints


@pytest.fixture(scope="module")
def layer() -> tuple[bytes, bytes]:
    tar = big_tar(5 * MiB, seed=3)
    return tar, gzip.compress(tar, compresslevel=6, mtime=0)


def _offsets(size: int, n: int, seed: int = 1) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    cases = [(0, 1), (0, 100_000), (size - 1, 1), (size - 10, 100), (size, 10)]
    for _ in range(n):
        cases.append((rng.randrange(size), rng.choice([1, 511, 4096, 65536, 700_000])))
    # straddle every checkpoint-ish boundary
    cases += [(k * SPACING - 7, 20) for k in range(1, size // SPACING)]
    return cases


def test_index_then_random_reads(layer: tuple[bytes, bytes]) -> None:
    tar, gz = layer
    built = build_gzip_index(BytesReadAt(gz), spacing=SPACING)
    assert built.uncompressed_size == len(tar)
    assert index_uncompressed_size(built.index_bytes) == len(tar)
    assert built.entries == index_seekable(BlobFile(BytesReadAt(tar)), len(tar))
    with GzipLayerReader(BytesReadAt(gz), built.index_bytes) as reader:
        assert reader.size == len(tar)
        for off, size in _offsets(len(tar), 150):
            assert reader.pread(off, size) == tar[off : off + size], (off, size)


def test_sequential_reads_use_readahead(layer: tuple[bytes, bytes]) -> None:
    tar, gz = layer
    built = build_gzip_index(BytesReadAt(gz), spacing=SPACING)
    with GzipLayerReader(BytesReadAt(gz), built.index_bytes, pool_size=1) as reader:
        got = b"".join(reader.pread(off, 128 * 1024) for off in range(0, len(tar), 128 * 1024))
    assert got == tar


def test_parallel_readers(layer: tuple[bytes, bytes]) -> None:
    tar, gz = layer
    built = build_gzip_index(BytesReadAt(gz), spacing=SPACING)
    errors: list[BaseException] = []
    with GzipLayerReader(BytesReadAt(gz), built.index_bytes, pool_size=2) as reader:

        def work(seed: int) -> None:
            try:
                for off, size in _offsets(len(tar), 40, seed):
                    assert reader.pread(off, size) == tar[off : off + size]
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors


def test_multi_member_gzip(layer: tuple[bytes, bytes]) -> None:
    tar, _ = layer
    cut = len(tar) // 3 + 123
    gz = gzip_members(tar[:cut], tar[cut:])
    built = build_gzip_index(BytesReadAt(gz), spacing=SPACING)
    assert built.uncompressed_size == len(tar)
    with GzipLayerReader(BytesReadAt(gz), built.index_bytes) as reader:
        assert reader.pread(cut - 50, 100) == tar[cut - 50 : cut + 50]
        assert reader.pread(len(tar) - 5000, 5000) == tar[-5000:]


def test_corrupt_gzip(layer: tuple[bytes, bytes]) -> None:
    _, gz = layer
    bad = bytearray(gz)
    for i in range(len(bad) // 2, len(bad) // 2 + 64):
        bad[i] ^= 0x5A
    with pytest.raises(CorruptLayer):
        build_gzip_index(BytesReadAt(bytes(bad)), spacing=SPACING)


def test_truncated_gzip(layer: tuple[bytes, bytes]) -> None:
    _, gz = layer
    with pytest.raises(CorruptLayer):
        build_gzip_index(BytesReadAt(gz[: len(gz) // 2]), spacing=SPACING)


def test_not_gzip() -> None:
    with pytest.raises(CorruptLayer):
        build_gzip_index(BytesReadAt(b"PK\x03\x04" + bytes(5000)))


class _FailingReadAt:
    def __init__(self, data: bytes, fail_after: int) -> None:
        self._data = data
        self.fail_after = fail_after

    @property
    def size(self) -> int:
        return len(self._data)

    def read_at(self, offset: int, size: int) -> bytes:
        if offset >= self.fail_after:
            raise TransportError("connection reset by peer")
        return self._data[offset : offset + size]


def test_readat_errors_surface_unchanged() -> None:
    # Bigger than zran's 4 MiB reads (gzipindex.READ_BUF), so reads past the
    # middle of the blob really happen.
    tar = big_tar(12 * MiB, seed=4)
    gz = gzip.compress(tar, compresslevel=6, mtime=0)
    built = build_gzip_index(BytesReadAt(gz), spacing=SPACING)
    failing = _FailingReadAt(gz, fail_after=len(gz) // 2)
    with GzipLayerReader(failing, built.index_bytes) as reader:
        assert reader.pread(0, 1000) == tar[:1000]
        with pytest.raises(TransportError, match="reset"):
            reader.pread(len(tar) - 1000, 1000)
    with pytest.raises(TransportError):
        build_gzip_index(failing, spacing=SPACING)


def test_round_trip_through_indexdb(layer: tuple[bytes, bytes], tmp_path: Path) -> None:
    tar, gz = layer
    blob = tmp_path / "blob"
    blob.write_bytes(gz)
    digest = "sha256:" + "1" * 64
    with FileReadAt(blob) as ra:
        first = load_or_build(tmp_path / "cache", digest, mt.DOCKER_LAYER_GZIP, ra, ra.size)
        counting = CountingReadAt(ra)
        again = load_or_build(tmp_path / "cache", digest, mt.DOCKER_LAYER_GZIP, counting, ra.size)
        assert counting.bytes_read == 0  # from the database, not the blob
        assert again.entries == first.entries
        assert again.checkpoints == first.checkpoints
        assert again.span_digests == first.span_digests and len(first.span_digests) >= 3
        assert again.uncompressed_size == len(tar)
        reader = again.open_reader()
        try:
            for off, size in _offsets(len(tar), 30, seed=9):
                assert reader.pread(off, size) == tar[off : off + size]
        finally:
            reader.close()


# -- span digests ----------------------------------------------------------------


def _spans(gz: bytes, index_bytes: bytes, usize: int) -> list[tuple[int, int]]:
    return [(u.cstart, u.cend) for u in span_units(zran_checkpoints(index_bytes), len(gz), usize)]


def test_span_digests_are_the_units_ranges_hashed(layer: tuple[bytes, bytes]) -> None:
    """One digest per unit the mount cuts, over exactly its range, recomputed here."""
    tar, gz = layer
    built = build_gzip_index(BytesReadAt(gz), spacing=SPACING)
    spans = _spans(gz, built.index_bytes, len(tar))
    assert len(spans) > 5
    assert [(d.cstart, d.cend) for d in built.span_digests] == spans
    for (start, end), d in zip(spans, built.span_digests, strict=True):
        assert d.digest == "sha256:" + hashlib.sha256(gz[start:end]).hexdigest()


def test_the_index_is_the_one_indexed_gzip_exports(layer: tuple[bytes, bytes]) -> None:
    """Same points, same bytes: ``GzipLayerReader`` imports what it always did."""
    tar, gz = layer
    built = build_gzip_index(BytesReadAt(gz), spacing=SPACING)
    with indexed_gzip.IndexedGzipFile(fileobj=io.BytesIO(gz), spacing=SPACING) as igz:
        igz.build_full_index()
        out = io.BytesIO()
        igz.export_index(fileobj=out)
    assert built.index_bytes == out.getvalue()


def test_multi_member_spans_are_hashed_too(layer: tuple[bytes, bytes]) -> None:
    tar, _ = layer
    gz = gzip_members(tar[: 2 * MiB], tar[2 * MiB : 3 * MiB], tar[3 * MiB :])
    built = build_gzip_index(BytesReadAt(gz), spacing=SPACING)
    spans = _spans(gz, built.index_bytes, len(tar))
    assert [(d.cstart, d.cend) for d in built.span_digests] == spans
    for (start, end), d in zip(spans, built.span_digests, strict=True):
        assert d.digest == "sha256:" + hashlib.sha256(gz[start:end]).hexdigest()


@pytest.mark.parametrize("tail", [bytes(1000), b"not gzip"])
def test_bytes_after_the_stream_index_without_digests(
    layer: tuple[bytes, bytes], tail: bytes
) -> None:
    """What the one-pass builder refuses, indexed_gzip indexes as before: no digests."""
    tar, gz = layer
    built = build_gzip_index(BytesReadAt(gz + tail), spacing=SPACING)
    assert built.span_digests == ()
    assert built.uncompressed_size == len(tar)
    with GzipLayerReader(BytesReadAt(gz + tail), built.index_bytes) as reader:
        assert reader.pread(len(tar) - 5000, 5000) == tar[-5000:]


def test_random_reads_of_a_multi_member_layer_through_the_exported_index(
    layer: tuple[bytes, bytes],
) -> None:
    """indexed_gzip imports the points our own pass made, members and all: any
    read, across member ends included, is the tar's bytes."""
    tar, _ = layer
    cuts = [0, 1 * MiB + 17, 2 * MiB + 4093, 3 * MiB, len(tar)]
    gz = gzip_members(*(tar[a:b] for a, b in zip(cuts, cuts[1:], strict=False)))
    built = build_gzip_index(BytesReadAt(gz), spacing=SPACING)
    assert built.span_digests
    rng = random.Random(7)
    with GzipLayerReader(BytesReadAt(gz), built.index_bytes) as reader:
        for at in [c - 10 for c in cuts[1:-1]] + [rng.randrange(len(tar)) for _ in range(40)]:
            size = rng.randrange(1, 300_000)
            assert reader.pread(at, size) == tar[at : at + size], at
