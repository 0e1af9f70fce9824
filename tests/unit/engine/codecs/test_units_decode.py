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
from collections.abc import Callable

import pytest
import trio
import trio.lowlevel

from r8imfs.engine.codecs.gzipindex import build_gzip_index
from r8imfs.engine.codecs.units import Decoder, UnitTable, units_for_layer, zran_inflate
from r8imfs.engine.codecs.zstdindex import build_zstd_index
from r8imfs.engine.codecs.zstdwrite import write_chunked, write_seekable
from r8imfs.engine.readat import BytesReadAt
from r8imfs.errors import CorruptLayer
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


def _seekable() -> tuple[bytes, bytes]:
    out = io.BytesIO()
    write_seekable(io.BytesIO(TAR), out, frame_size=256 * KiB)
    blob = out.getvalue()
    return blob, build_zstd_index(BytesReadAt(blob)).frames.to_bytes()


def _chunked() -> tuple[bytes, bytes]:
    out = io.BytesIO()
    write_chunked(io.BytesIO(TAR), out, frame_size=256 * KiB, digest_output=False)
    blob = out.getvalue()
    return blob, build_zstd_index(BytesReadAt(blob)).frames.to_bytes()


def _gzip() -> tuple[bytes, bytes]:
    blob = gzip.compress(TAR, 6)
    return blob, build_gzip_index(BytesReadAt(blob), spacing=512 * KiB).index_bytes


def _plain() -> tuple[bytes, bytes]:
    return TAR, b""


FORMATS: dict[str, tuple[str, Callable[[], tuple[bytes, bytes]]]] = {
    "seekable zstd": ("zstd", _seekable),
    "zstd:chunked (r8imfs zstd)": ("zstd", _chunked),
    "gzip spans": ("gzip", _gzip),
    "plain": ("none", _plain),
}


def _units(name: str) -> tuple[bytes, UnitTable, Decoder | None]:
    compression, build = FORMATS[name]
    blob, checkpoints = build()
    found = units_for_layer(
        compression, checkpoints, len(blob), len(TAR), span_inflater=zran_inflate
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


#: Only zstd: its frames carry a content checksum. A deflate span has none (the
#: gzip CRC covers the whole member), so damage inside one can inflate to other
#: bytes of the right length: the mount reads gzip spans only of blobs verified
#: whole before (their index was built by a full pass), whose fetched blocks
#: must match the block hashes kept then (``BlobReader.fetch_range``).
@pytest.mark.parametrize("name", ["seekable zstd", "zstd:chunked (r8imfs zstd)"])
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
        with pytest.raises(CorruptLayer):
            await reader.read(unit.ustart + 10, 100)
        reader.close()


def test_a_gzip_index_without_checkpoints_gives_no_units() -> None:
    """Incompressible bodies become stored blocks, where zran takes no checkpoint: such a
    layer is read by its gzip reader, not by units (a table must start at offset 0)."""
    tar = tar_of({"src/noise.bin": random.Random(1).randbytes(6 * MiB)})
    blob = gzip.compress(tar)
    index = build_gzip_index(BytesReadAt(blob)).index_bytes  # the mount's spacing
    assert units_for_layer("gzip", index, len(blob), len(tar), span_inflater=zran_inflate) is None
    with pytest.raises(CorruptLayer):
        UnitTable([], len(tar))
