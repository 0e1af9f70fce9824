"""Units of zstd, gzip and plain layers, decoded in parallel, against the bytes they came from."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import random
import struct
import tarfile
import zlib

import pytest
import trio
import trio.lowlevel
import zstandard

from r8imfs.engine.codecs.gzipindex import build_gzip_index
from r8imfs.engine.codecs.units import (
    Checkpoint,
    Decoder,
    SpanDigest,
    SpanDigestMismatch,
    Unit,
    UnitTable,
    decode_zstd,
    fixed_units,
    frame_units,
    seekable_data_end,
    span_decoder,
    span_units,
    units_for_layer,
    zran_checkpoints,
)
from r8imfs.engine.codecs.zstdindex import FrameTable, read_seek_table
from r8imfs.engine.codecs.zstdwrite import write_seekable
from r8imfs.engine.readat import BytesReadAt
from r8imfs.errors import CorruptLayer
from r8imfs.image.fetchplan import UnitReader
from r8imfs.oci.mediatypes import Compression

KiB = 1024


def weights_like(n: int, seed: int = 7) -> bytes:
    """Compressible but not trivially: random low bytes, a few distinct high bytes."""
    rng = random.Random(seed)
    low = rng.randbytes((n + 1) // 2)
    high = bytes(rng.choice(b"\x3c\x3d\xbc\xbd\x38") for _ in range(n // 2))
    out = bytearray(n)
    out[0::2], out[1::2] = low, high
    return bytes(out)


def seekable(data: bytes, frame: int) -> tuple[bytes, UnitTable]:
    out = io.BytesIO()
    write_seekable(io.BytesIO(data), out, frame_size=frame, threads=1)
    blob = out.getvalue()
    readat = BytesReadAt(blob)
    table = read_seek_table(readat)
    assert table is not None
    return blob, frame_units(table, seekable_data_end(readat))


def test_frame_units_tile_the_blob_and_the_layer() -> None:
    data = weights_like(300 * KiB + 17)
    blob, units = seekable(data, 64 * KiB)
    assert len(units) == 5
    assert units[0].cstart == 0 and units[4].uend == len(data)
    assert all(units[i].cend == units[i + 1].cstart for i in range(4))
    assert units[4].cend < len(blob)  # the seek table is not a unit's
    assert [u.usize for u in units] == [64 * KiB] * 4 + [300 * KiB + 17 - 256 * KiB]
    assert units.locate(64 * KiB) == 1 and units.locate(64 * KiB - 1) == 0
    assert units.covering(10, 128 * KiB + 1) == range(0, 3)
    assert units.compression is Compression.ZSTD  # its codec sizes a reader's GETs


def test_decode_each_frame_matches_its_slice() -> None:
    data = weights_like(200 * KiB)
    blob, units = seekable(data, 32 * KiB)
    for u in units:
        assert decode_zstd(u, blob[u.cstart : u.cend]) == data[u.ustart : u.uend]


def test_decode_runs_of_plain_frames_across_a_skippable_frame() -> None:
    """Plain zstd (no content size, several frames and a skippable one) in one unit."""
    parts = [weights_like(40 * KiB, s) for s in range(3)]
    cctx = zstandard.ZstdCompressor(write_content_size=False)
    skippable = struct.pack("<II", 0x184D2A50, 5) + b"hello"
    blob = cctx.compress(parts[0]) + skippable + cctx.compress(parts[1]) + cctx.compress(parts[2])
    table = FrameTable((0,), (0,), 120 * KiB)
    units = frame_units(table, len(blob))
    assert decode_zstd(units[0], blob) == b"".join(parts)


def test_a_damaged_frame_is_corrupt_not_wrong_bytes() -> None:
    data = weights_like(64 * KiB)
    blob, units = seekable(data, 64 * KiB)
    u = units[0]
    bad = bytearray(blob[u.cstart : u.cend])
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(CorruptLayer):
        decode_zstd(u, bytes(bad))
    with pytest.raises(CorruptLayer):
        decode_zstd(u, blob[u.cstart : u.cend - 1])


def test_unit_table_rejects_gaps() -> None:
    with pytest.raises(CorruptLayer):
        UnitTable([Unit(0, 0, 10, 0, 5), Unit(1, 10, 20, 6, 5)], 11)
    with pytest.raises(CorruptLayer):
        UnitTable([Unit(0, 0, 10, 0, 5)], 6)
    with pytest.raises(ValueError, match="codec"):
        UnitTable([Unit(0, 0, 10, 0, 5)], 5, compression="lz4")  # type: ignore[arg-type]


async def test_parallel_decode_of_a_seekable_layer_matches_the_reference() -> None:
    data = weights_like(3 * 1024 * KiB + 123)
    blob, units = seekable(data, 128 * KiB)

    async def fetch(start: int, end: int) -> bytes:
        await trio.lowlevel.checkpoint()
        return blob[start:end]

    async with trio.open_nursery() as nursery:
        reader = UnitReader(units, fetch, decode_zstd, nursery, max_range=512 * KiB)
        rng = random.Random(1)
        for _ in range(40):  # random reads, some across frame boundaries
            off = rng.randrange(len(data))
            size = rng.choice([1, 4 * KiB, 64 * KiB, 300 * KiB])
            assert await reader.read(off, size) == data[off : off + size]
        stream = reader.stream()
        got = bytearray()
        while len(got) < len(data):  # sequential, as FUSE reads
            got += await stream.read(len(got), 128 * KiB)
        stream.close()
        assert bytes(got) == data
        assert reader.decodes >= len(units)
        reader.close()


async def test_concurrent_readers_over_one_layer_get_their_bytes() -> None:
    data = weights_like(2 * 1024 * KiB)
    blob, units = seekable(data, 64 * KiB)

    async def fetch(start: int, end: int) -> bytes:
        await trio.lowlevel.checkpoint()
        return blob[start:end]

    async def copy(reader: UnitReader, start: int, out: list[bytes]) -> None:
        stream = reader.stream()
        pos, parts = start, []
        while pos < len(data):
            piece = await stream.read(pos, 96 * KiB)
            parts.append(piece)
            pos += len(piece)
        stream.close()
        out.append(b"".join(parts))

    async with trio.open_nursery() as nursery:
        reader = UnitReader(units, fetch, decode_zstd, nursery, max_window=256 * KiB)
        results: list[bytes] = []
        async with trio.open_nursery() as readers:
            for start in (0, 0, 700 * KiB):
                readers.start_soon(copy, reader, start, results)
        assert sorted(map(len, results)) == sorted([len(data), len(data), len(data) - 700 * KiB])
        for r in results:
            assert data.endswith(r)
        reader.close()


def test_span_units_carry_their_checkpoints() -> None:
    points = [
        Checkpoint(10, 0, 0, b""),
        Checkpoint(500, 4000, 3, b"w" * 32),
        Checkpoint(900, 8000, 0, b"v" * 32),
    ]
    units = span_units(points, 1000, 9000)
    assert units.compression is Compression.GZIP
    assert fixed_units(10, 4).compression is Compression.NONE
    assert [(u.cstart, u.cend, u.ustart, u.usize) for u in units] == [
        (10, 500, 0, 4000),
        (499, 900, 4000, 4000),  # its first bits are in the byte before 500
        (900, 1000, 8000, 1000),
    ]
    seen = []

    def inflate(
        data: bytes | memoryview, bits: int, window: bytes, usize: int, end_bits: int | None = None
    ) -> bytes:
        seen.append((len(data), bits, window[:1], end_bits))
        return bytes(usize)

    decode = span_decoder(inflate)
    assert decode(units[1], bytes(units[1].csize)) == bytes(4000)
    assert decode(units[2], bytes(units[2].csize)) == bytes(1000)
    # the next span's bits in the last byte: 0 (it starts on a byte); the last has none
    assert seen == [(401, 3, b"w", 0), (100, 0, b"v", None)]
    with pytest.raises(CorruptLayer):
        span_decoder(lambda d, b, w, n, e=None: bytes(n - 1))(units[0], b"")


def _points() -> list[Checkpoint]:
    return [Checkpoint(10, 0, 0, b""), Checkpoint(500, 4000, 3, b"w" * 32)]


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_span_digests_are_checked_before_inflating() -> None:
    blob = bytes(range(256)) * 4
    digests = [SpanDigest(10, 500, _sha(blob[10:500])), SpanDigest(499, 1000, _sha(blob[499:]))]
    units = span_units(_points(), 1000, 9000, digests)
    assert units.verified and [u.digest for u in units] == [d.digest for d in digests]
    inflated = []

    def inflate(
        data: bytes | memoryview, bits: int, window: bytes, usize: int, end_bits: int | None = None
    ) -> bytes:
        inflated.append(bytes(data))
        return bytes(usize)

    decode = span_decoder(inflate)
    assert decode(units[1], blob[499:]) == bytes(5000)
    bad = bytearray(blob[499:])
    bad[100] ^= 1
    with pytest.raises(SpanDigestMismatch, match="gzip span 1 "):
        decode(units[1], bytes(bad))
    assert inflated == [blob[499:]]  # the damaged span never reached the inflater


@pytest.mark.parametrize(
    "ranges",
    [
        [(10, 500), (500, 1000)],  # not the units' ranges (the partial byte left out)
        [(10, 500)],  # one short
        [],
    ],
)
def test_digests_that_do_not_fit_the_units_are_not_used(ranges: list[tuple[int, int]]) -> None:
    units = span_units(_points(), 1000, 9000, [SpanDigest(a, b, _sha(b"")) for a, b in ranges])
    assert not units.verified
    assert all(u.digest is None for u in units)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="parallel decode needs 2 cores")
def test_decode_zstd_from_two_threads_at_once() -> None:
    """decode_zstd is safe from two threads at once (a context per thread)."""
    import concurrent.futures

    data = weights_like(2 * 1024 * KiB)
    blob, units = seekable(data, 256 * KiB)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda u: decode_zstd(u, blob[u.cstart : u.cend]), list(units)))
    assert b"".join(outs) == data


@functools.cache
def gzip_layer() -> tuple[bytes, bytes]:
    """A tar of text then random bytes, gzip -6: (tar, blob). Over 4 MiB of
    blob: zran makes no points within its first read buffer (``READ_BUF``)."""
    rng = random.Random(1)
    words = [b"layer", b"blob", b"tensor", b"weights", b"the", b"of", b"a"]
    text = b" ".join(rng.choices(words, k=500_000))
    body = text + rng.randbytes(6 * 1024 * KiB)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        info = tarfile.TarInfo("weights.bin")
        info.size = len(body)
        tf.addfile(info, io.BytesIO(body))
    tar = out.getvalue()
    return tar, gzip.compress(tar, 6)


def test_gzip_spans_come_from_the_layers_own_checkpoint_index() -> None:
    """zran's exported points become span units; a span that starts on a byte
    boundary inflates to its slice of the tar with plain zlib (raw deflate,
    the window as dictionary): the offsets and windows are right. Spans that
    start mid-byte need inflatePrime (archive.zran, not here)."""
    tar, blob = gzip_layer()
    index = build_gzip_index(BytesReadAt(blob), spacing=1024 * KiB)
    points = zran_checkpoints(index.index_bytes)
    assert len(points) >= 4 and points[0].uoffset == 0 and not points[0].window
    assert all(len(p.window) == 32 * KiB for p in points[1:])
    units = span_units(points, len(blob), len(tar))
    assert units[len(units) - 1].uend == len(tar)
    checked = 0
    for u in units:
        assert u.state is not None
        if u.state.bits:
            continue
        inflater = zlib.decompressobj(-15, zdict=u.state.window)
        assert inflater.decompress(blob[u.cstart : u.cend], u.usize) == tar[u.ustart : u.uend]
        checked += 1
    assert checked >= 2


def test_a_truncated_checkpoint_index_is_corrupt() -> None:
    tar, blob = gzip_layer()
    index = build_gzip_index(BytesReadAt(blob), spacing=1024 * KiB).index_bytes
    with pytest.raises(CorruptLayer):
        zran_checkpoints(index[:-100])
    with pytest.raises(CorruptLayer):
        zran_checkpoints(b"NOTGZ" + index[5:])


def plain_zstd(parts: list[bytes]) -> bytes:
    """A plain multi-frame zstd stream (as skopeo or the zstd CLI concatenate):
    no content sizes, no seek table."""
    cctx = zstandard.ZstdCompressor(write_content_size=False)
    return b"".join(cctx.compress(p) for p in parts)


async def read_all(units: UnitTable, decode: Decoder | None, blob: bytes) -> bytes:
    async def fetch(start: int, end: int) -> bytes:
        await trio.lowlevel.checkpoint()
        return blob[start:end]

    async with trio.open_nursery() as nursery:
        reader = UnitReader(units, fetch, decode, nursery, max_range=1024 * KiB)
        out = b"".join([c async for c in reader.iter_range(0, reader.size)])
        rng = random.Random(3)
        for _ in range(20):
            off = rng.randrange(reader.size)
            assert await reader.read(off, 70 * KiB) == out[off : off + 70 * KiB]
        reader.close()
    return out


async def test_units_from_the_index_of_a_seekable_layer_read_back_the_tar() -> None:
    data = weights_like(2 * 1024 * KiB + 5)
    out = io.BytesIO()
    write_seekable(io.BytesIO(data), out, frame_size=256 * KiB, threads=1)
    blob = out.getvalue()
    table = read_seek_table(BytesReadAt(blob))  # what the layer's index keeps
    assert table is not None
    made = units_for_layer("zstd", table.to_bytes(), len(blob), len(data))
    assert made is not None
    units, decode = made
    assert units[len(units) - 1].cend == len(blob)  # the seek table rides with the last frame
    assert await read_all(units, decode, blob) == data


async def test_units_from_restart_points_of_a_plain_zstd_layer_read_back_the_tar() -> None:
    parts = [weights_like(512 * KiB, s) for s in range(7)]
    blob = plain_zstd(parts)
    points = []
    cpos = upos = 0
    for i, p in enumerate(parts):  # restart points at least 1 MiB apart, as the indexer keeps
        if i % 2 == 0:
            points.append((cpos, upos))
        cpos += len(zstandard.ZstdCompressor(write_content_size=False).compress(p))
        upos += len(p)
    cs, us = zip(*points, strict=True)
    table = FrameTable(cs, us, upos)
    made = units_for_layer("zstd", table.to_bytes(), len(blob), upos)
    assert made is not None
    units, decode = made
    assert len(units) == 4 and units[0].usize == 1024 * KiB
    assert await read_all(units, decode, blob) == b"".join(parts)


async def test_a_plain_tar_is_cut_into_stored_units() -> None:
    data = weights_like(5 * 1024 * KiB + 1)
    made = units_for_layer("none", b"", len(data), len(data))
    assert made is not None and made[1] is None
    assert await read_all(made[0], None, data) == data


def test_layers_without_units() -> None:
    assert units_for_layer("gzip", b"", 10, 20) is None  # read from its decoded copy
    assert units_for_layer("zstd", b"", 10, 20) is None
    _, blob = gzip_layer()
    index = build_gzip_index(BytesReadAt(blob), spacing=1024 * KiB)
    assert units_for_layer("gzip", index.index_bytes, len(blob), index.uncompressed_size) is None
    made = units_for_layer(
        "gzip",
        index.index_bytes,
        len(blob),
        index.uncompressed_size,
        span_inflater=lambda d, b, w, n, e=None: bytes(n),
    )
    assert made is not None and len(made[0]) == len(zran_checkpoints(index.index_bytes))
    assert not made[0].verified  # no digests given: the blob cache must check the bytes
    signed = units_for_layer(
        "gzip",
        index.index_bytes,
        len(blob),
        index.uncompressed_size,
        span_inflater=lambda d, b, w, n, e=None: bytes(n),
        digests=index.span_digests,
    )
    assert signed is not None and signed[0].verified
