"""Reading through a zTOC: the spans a read needs, each verified before it is inflated."""

from __future__ import annotations

import gzip
import io
import random
import tarfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from r8imfs.engine.codecs import socireader, ztoc, ztocbuild
from r8imfs.engine.entry import Kind
from r8imfs.engine.readat import BytesReadAt, CountingReadAt
from r8imfs.errors import CorruptLayer
from tests.helpers.tars import M, MiB, big_tar, make_tar, payload

SPAN = 256 * 1024


@pytest.fixture(scope="module")
def layer() -> tuple[bytes, bytes, ztoc.Ztoc]:
    tar = big_tar(4 * MiB, seed=9)
    blob = gzip.compress(tar, mtime=0)
    return tar, blob, ztocbuild.build_gzip(io.BytesIO(blob), span_size=SPAN)


def test_random_reads_match_the_tar(layer: tuple[bytes, bytes, ztoc.Ztoc]) -> None:
    tar, blob, z = layer
    rng = random.Random(1)
    with socireader.SociLayer(z, BytesReadAt(blob), span_size=SPAN, cache_spans=2) as reader:
        assert reader.size == z.uncompressed_archive_size
        for _ in range(150):
            off = rng.randrange(reader.size)
            n = rng.randrange(1, 3 * SPAN)
            assert reader.pread(off, n) == tar[off : min(off + n, reader.size)]
        assert reader.pread(0, reader.size + 99) == tar[: reader.size]
        assert reader.pread(reader.size, 10) == b""


def test_files_read_as_tarfile_extracts_them(layer: tuple[bytes, bytes, ztoc.Ztoc]) -> None:
    tar, blob, z = layer
    with (
        socireader.SociLayer(z, BytesReadAt(blob)) as reader,
        tarfile.open(fileobj=io.BytesIO(tar)) as tf,
    ):
        for f in z.files:
            body = tf.extractfile(f.name)
            assert body is not None
            assert reader.read_file(f, 0, f.uncompressed_size + 1) == body.read()
            assert reader.read_file(f, f.uncompressed_size, 5) == b""


def test_a_small_file_fetches_only_its_spans(layer: tuple[bytes, bytes, ztoc.Ztoc]) -> None:
    _, blob, z = layer
    counting = CountingReadAt(BytesReadAt(blob))
    spans = ztoc.validate(z, len(blob))
    small = next(f for f in z.files if 0 < f.uncompressed_size < 4096)
    with socireader.SociLayer(z, counting) as reader:
        reader.read_file(small, 0, small.uncompressed_size)
        i = ztoc.span_of(spans, small.uncompressed_offset)
        j = ztoc.span_of(spans, small.uncompressed_offset + small.uncompressed_size - 1)
        assert counting.bytes_read == spans.cend[j] - spans.cstart[i]
        reader.read_file(small, 0, small.uncompressed_size)
        assert reader.spans_fetched == j - i + 1  # the second read came from the cache


def test_corrupt_span_fails_on_first_touch_and_others_still_read(
    layer: tuple[bytes, bytes, ztoc.Ztoc],
) -> None:
    tar, blob, z = layer
    spans = ztoc.validate(z, len(blob))
    k = len(spans) // 2
    bad = bytearray(blob)
    bad[(spans.cstart[k] + spans.cend[k]) // 2] ^= 0x40
    with socireader.SociLayer(z, BytesReadAt(bytes(bad))) as reader:
        with pytest.raises(socireader.SpanDigestMismatch, match=f"span {k} "):
            reader.pread(spans.ustart[k] + 10, 100)
        with pytest.raises(socireader.SpanDigestMismatch):
            reader.pread(0, reader.size)  # a big read through it fails whole
        assert reader.pread(spans.ustart[k - 1], 1000) == tar[spans.ustart[k - 1] :][:1000]
        assert reader.pread(spans.ustart[k + 1], 1000) == tar[spans.ustart[k + 1] :][:1000]


def test_a_blob_cut_short_is_an_error(layer: tuple[bytes, bytes, ztoc.Ztoc]) -> None:
    _, blob, z = layer

    class Short(BytesReadAt):
        @property
        def size(self) -> int:
            return len(blob)

    with (
        socireader.SociLayer(z, Short(blob[:-5000])) as reader,
        pytest.raises(CorruptLayer, match="cut short"),
    ):
        reader.pread(reader.size - 10, 10)


def test_threads_share_the_reader(layer: tuple[bytes, bytes, ztoc.Ztoc]) -> None:
    tar, blob, z = layer
    rng = random.Random(2)
    ranges = [(rng.randrange(len(tar) - 2 * SPAN), rng.randrange(1, 2 * SPAN)) for _ in range(60)]
    with (
        socireader.SociLayer(z, BytesReadAt(blob), workers=3, cache_spans=3) as reader,
        ThreadPoolExecutor(6) as pool,
    ):
        results = list(pool.map(lambda r: reader.pread(*r), ranges))
    for (off, n), got in zip(ranges, results, strict=True):
        assert got == tar[off : off + n]


def test_uncompressed_layer() -> None:
    tar = make_tar([M("f", f"f{i}", payload(90_000, seed=i)) for i in range(20)])
    z = ztocbuild.build_tar(io.BytesIO(tar), span_size=SPAN)
    counting = CountingReadAt(BytesReadAt(tar))
    with socireader.SociLayer(z, counting) as reader:
        f = z.files[7]
        assert reader.read_file(f, 10, 1000) == tar[f.uncompressed_offset + 10 :][:1000]
        assert counting.bytes_read <= 2 * SPAN
        bad = bytearray(tar)
        bad[5] ^= 1
    with (
        socireader.SociLayer(z, BytesReadAt(bytes(bad))) as reader,
        pytest.raises(socireader.SpanDigestMismatch),
    ):
        reader.pread(0, 10)


def test_entries_from_the_toc() -> None:
    tar = make_tar(
        [
            M("d", "etc", mode=0o750),
            M("f", "etc/a", b"one", pax={"SCHILY.xattr.user.k": "v"}),
            M("h", "etc/b", link="etc/a"),
            M("l", "etc/c", link="a"),
            M("f", "etc/a", b"two, later"),
        ]
    )
    z = ztocbuild.build_gzip(io.BytesIO(gzip.compress(tar)), span_size=SPAN)
    found = {e.path: e for e in socireader.entries(z)}
    assert found["etc"].kind is Kind.DIR and found["etc"].mode == 0o750
    assert found["etc/a"].size == len(b"two, later")  # the later duplicate wins
    assert found["etc/b"].kind is Kind.HARDLINK and found["etc/b"].linkname == "etc/a"
    assert found["etc/c"].linkname == "a"
    assert found["etc"].mtime == 1_700_000_000
    with socireader.SociLayer(z, BytesReadAt(gzip.compress(tar))) as reader:
        a = found["etc/a"]
        assert reader.pread(a.data_offset, a.size) == b"two, later"
    first = next(f for f in z.files if f.name == "etc/a")
    assert socireader.to_entry(first, 0).xattrs == {"user.k": b"v"}


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("2023-11-14T22:13:20Z", 1_700_000_000.0),
        ("2023-11-14T22:13:20.5Z", 1_700_000_000.5),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000.0),
        ("garbage", 0.0),
        ("", 0.0),
    ],
)
def test_parse_mod_time(text: str, want: float) -> None:
    assert socireader.parse_mod_time(text) == want


def test_checkpoints_past_the_end_of_the_archive() -> None:
    """Zeros after the end-of-archive blocks hold checkpoints Go's reader never reaches."""
    tar = make_tar([M("f", "w.bin", random.Random(3).randbytes(300_000))]) + bytes(400_000)
    blob = gzip.compress(tar, compresslevel=0, mtime=0)  # stored blocks: boundaries everywhere
    z = ztocbuild.build_gzip(io.BytesIO(blob), span_size=64 * 1024)
    _, cps = ztoc.decode_gzip_zinfo(z.checkpoints)
    assert cps[-1].out > z.uncompressed_archive_size
    with socireader.SociLayer(z, BytesReadAt(blob)) as reader:
        assert reader.pread(0, len(tar)) == tar[: z.uncompressed_archive_size]
        f = z.files[0]
        assert reader.read_file(f, 0, 300_000) == tar[f.uncompressed_offset :][:300_000]


def test_blob_reads_stay_on_the_calling_thread(layer: tuple[bytes, bytes, ztoc.Ztoc]) -> None:
    """The mount's ReadAt calls back into trio: only the thread that called pread may use it."""
    import threading

    tar, blob, z = layer
    callers: set[int] = set()

    class Recording(BytesReadAt):
        def read_at(self, offset: int, size: int) -> bytes:
            callers.add(threading.get_ident())
            return super().read_at(offset, size)

    with socireader.SociLayer(z, Recording(blob), workers=4) as reader:
        assert reader.pread(0, 10 * SPAN) == tar[: 10 * SPAN]
        assert reader.spans_fetched >= 10
    assert callers == {threading.get_ident()}


def test_a_shared_pool_outlives_its_readers(layer: tuple[bytes, bytes, ztoc.Ztoc]) -> None:
    tar, blob, z = layer
    with ThreadPoolExecutor(2) as pool:
        for _ in range(2):
            with socireader.SociLayer(z, BytesReadAt(blob), pool=pool) as reader:
                assert reader.pread(SPAN, 3 * SPAN) == tar[SPAN : 4 * SPAN]
        assert pool.submit(lambda: 7).result() == 7  # still open
