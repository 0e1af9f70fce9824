"""Parallel decode against a reference, for every layer format read by units (issue 12).

Each blob is built by the writer the product uses (or gzip's own), its unit
table taken from the index the mount keeps (``units_for_layer`` over the
``checkpoints`` bytes), and the whole uncompressed tar read back through a
``UnitReader`` (several GETs in flight, units decoded on ``run_cpu``
threads) must equal the tar; so must scattered reads; and a damaged unit is
an error, never other bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import struct
from collections.abc import Callable

import pytest
import trio
import trio.lowlevel

from r8imfs.engine.codecs.gzipindex import build_gzip_index
from r8imfs.engine.codecs.units import (
    Decoder,
    SpanDigest,
    UnitTable,
    units_for_layer,
    zran_inflate,
)
from r8imfs.engine.codecs.zstdindex import build_zstd_index
from r8imfs.engine.codecs.zstdwrite import write_chunked, write_seekable
from r8imfs.engine.readat import BytesReadAt
from r8imfs.errors import CorruptLayer, DigestMismatch
from r8imfs.image.fetchplan import DecodedCache, UnitReader
from tools.demoimage import tar_of

KiB, MiB = 1024, 1024 * 1024


def _tar() -> bytes:
    rng = random.Random(7)
    noise = bytes(rng.getrandbits(8) for _ in range(64 * KiB))
    text = b"".join(b"line %d of a text file\n" % i for i in range(60_000))
    weights = b"".join(hashlib.sha256(b"%d" % i).digest()[: i % 32 + 1] for i in range(400_000))
    files = {f"src/small/{i}.txt": b"x" * i for i in range(0, 3000, 97)}
    return tar_of({**files, "src/noise.bin": noise, "src/a.txt": text, "src/w.bin": weights})


TAR = _tar()


#: a blob, its index's checkpoints and span digests
Built = tuple[bytes, bytes, tuple[SpanDigest, ...]]


def _seekable() -> Built:
    out = io.BytesIO()
    write_seekable(io.BytesIO(TAR), out, frame_size=256 * KiB)
    blob = out.getvalue()
    return blob, build_zstd_index(BytesReadAt(blob)).frames.to_bytes(), ()


def _chunked() -> Built:
    out = io.BytesIO()
    write_chunked(io.BytesIO(TAR), out, frame_size=256 * KiB, digest_output=False)
    blob = out.getvalue()
    return blob, build_zstd_index(BytesReadAt(blob)).frames.to_bytes(), ()


def _gzip() -> Built:
    blob = gzip.compress(TAR, 6)
    return blob, build_gzip_index(BytesReadAt(blob), spacing=512 * KiB).index_bytes, ()


def _gzip_verified() -> Built:
    blob = gzip.compress(TAR, 6)
    built = build_gzip_index(BytesReadAt(blob), spacing=512 * KiB)
    return blob, built.index_bytes, built.span_digests


def _plain() -> Built:
    return TAR, b"", ()


FORMATS: dict[str, tuple[str, Callable[[], Built]]] = {
    "seekable zstd": ("zstd", _seekable),
    "zstd:chunked (r8imfs zstd)": ("zstd", _chunked),
    "gzip spans": ("gzip", _gzip),
    "gzip spans with digests": ("gzip", _gzip_verified),
    "plain": ("none", _plain),
}


def _units(name: str) -> tuple[bytes, UnitTable, Decoder | None]:
    compression, build = FORMATS[name]
    blob, checkpoints, digests = build()
    found = units_for_layer(
        compression, checkpoints, len(blob), len(TAR), span_inflater=zran_inflate, digests=digests
    )
    assert found is not None
    table, decode = found
    assert len(table) >= 4  # several units: the decodes can overlap
    return blob, table, decode


async def _read_all(blob: bytes, table: UnitTable, decode: Decoder | None) -> tuple[bytes, int]:
    async def fetch(start: int, end: int) -> bytes:
        await trio.lowlevel.checkpoint()
        return blob[start:end]

    async with trio.open_nursery() as nursery:
        reader = UnitReader(table, fetch, decode, nursery, max_range=512 * KiB)
        parts = [p async for p in reader.iter_range(0, len(TAR))]
        rng = random.Random(3)
        for _ in range(40):
            offset, size = rng.randrange(len(TAR)), rng.choice([1, 700, 64 * KiB, 300 * KiB])
            assert await reader.read(offset, size) == TAR[offset : offset + size], offset
        reader.close()
    return b"".join(parts), reader.requests


@pytest.mark.parametrize("name", list(FORMATS))
async def test_parallel_decode_matches_the_tar(name: str) -> None:
    blob, table, decode = _units(name)
    got, requests = await _read_all(blob, table, decode)
    assert got == TAR
    assert requests >= 2


#: zstd: its frames carry a content checksum; gzip spans whose index holds their
#: digests: each is hashed before it is inflated. A deflate span alone has no
#: check (the gzip CRC covers the whole member), so damage inside one can
#: inflate to other bytes of the right length: without digests, the mount
#: reads gzip spans only through the blob cache, whose fetched blocks must
#: match the block hashes kept when the blob verified (``BlobReader.fetch_range``).
@pytest.mark.parametrize(
    "name", ["seekable zstd", "zstd:chunked (r8imfs zstd)", "gzip spans with digests"]
)
async def test_a_damaged_unit_is_an_error_not_bytes(name: str) -> None:
    blob, table, decode = _units(name)
    unit = max((table[i] for i in range(1, len(table))), key=lambda u: u.csize)
    bad = bytearray(blob)
    for i in range(unit.cstart + unit.csize // 2, unit.cstart + unit.csize // 2 + 60):
        bad[i] ^= 0x5A

    async def fetch(start: int, end: int) -> bytes:
        return bytes(bad[start:end])

    async with trio.open_nursery() as nursery:
        reader = UnitReader(table, fetch, decode, nursery, cache=DecodedCache(0))
        before = table[unit.index - 1]
        assert await reader.read(before.ustart, before.usize) == TAR[before.ustart : before.uend]
        with pytest.raises((CorruptLayer, DigestMismatch)):  # a frame's or a span's check
            await reader.read(unit.ustart + 10, 100)
        reader.close()


async def test_stored_blocks_get_checkpoints_and_verified_units() -> None:
    """Incompressible bodies become stored blocks; the index's own pass takes
    checkpoints at their boundaries too (indexed_gzip took none there), so such a
    layer is read by verified units like any other."""
    tar = tar_of({"src/noise.bin": random.Random(1).randbytes(6 * MiB)})
    blob = gzip.compress(tar)
    built = build_gzip_index(BytesReadAt(blob))  # the mount's spacing
    found = units_for_layer(
        "gzip",
        built.index_bytes,
        len(blob),
        len(tar),
        span_inflater=zran_inflate,
        digests=built.span_digests,
    )
    assert found is not None
    table, decode = found
    assert table.verified and len(table) >= 2

    async def fetch(start: int, end: int) -> bytes:
        return blob[start:end]

    async with trio.open_nursery() as nursery:
        reader = UnitReader(table, fetch, decode, nursery, cache=DecodedCache(0))
        assert b"".join([p async for p in reader.iter_range(0, len(tar))]) == tar
        reader.close()


def test_a_gzip_index_without_checkpoints_gives_no_units() -> None:
    """A zran index whose first point is not at the tar's start gives no units (a
    table must start at offset 0): such a layer is read by its gzip reader."""
    tar = tar_of({"src/a.txt": b"text\n" * 100_000})
    blob = gzip.compress(tar)
    index = bytearray(build_gzip_index(BytesReadAt(blob), spacing=64 * KiB).index_bytes)
    struct.pack_into("<Q", index, 41 + 8, 1)  # the first point's uncompressed offset
    assert (
        units_for_layer("gzip", bytes(index), len(blob), len(tar), span_inflater=zran_inflate)
        is None
    )
    with pytest.raises(CorruptLayer):
        UnitTable([], len(tar))
