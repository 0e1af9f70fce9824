"""OrderedHash: a blob's digest from ranges that arrive in any order."""

from __future__ import annotations

import contextlib
import hashlib
import random

import pytest
import trio

from r8imfs.engine.codecs.units import fixed_units
from r8imfs.errors import DigestMismatch
from r8imfs.image.fetchplan import UnitReader
from r8imfs.image.orderedhash import OrderedHash

BLOB = random.Random(4).randbytes(100_000)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


def pieces(cuts: list[int]) -> list[tuple[int, bytes]]:
    edges = [0, *cuts, len(BLOB)]
    return [(a, BLOB[a:b]) for a, b in zip(edges, edges[1:], strict=False)]


async def test_ranges_in_any_order_hash_to_the_blobs_digest() -> None:
    parts = pieces([10, 5000, 5001, 40_000, 77_777])
    random.Random(1).shuffle(parts)
    h = OrderedHash()
    for start, data in parts:
        h.add(start, memoryview(data))
        await h.advance()
    assert h.pos == len(BLOB)
    await h.verify(len(BLOB), DIGEST)


async def test_overlaps_are_hashed_once() -> None:
    h = OrderedHash()
    h.add(0, BLOB[:600])
    h.add(599, BLOB[599:1000])  # shares a byte, as gzip spans do
    h.add(100, BLOB[100:200])  # wholly inside what came before
    h.add(1000, BLOB[1000:])
    await h.verify(len(BLOB), DIGEST)


async def test_a_gap_or_a_wrong_byte_is_a_mismatch() -> None:
    h = OrderedHash()
    h.add(0, BLOB[:500])
    h.add(600, BLOB[600:])
    with pytest.raises(DigestMismatch, match="only 500"):
        await h.verify(len(BLOB), DIGEST)
    bad = bytearray(BLOB)
    bad[70_000] ^= 1
    h = OrderedHash()
    h.add(0, bytes(bad))
    with pytest.raises(DigestMismatch, match="hashes to"):
        await h.verify(len(BLOB), DIGEST)


async def test_a_single_pass_through_a_unit_reader_is_verified_on_the_way() -> None:
    async def fetch(start: int, end: int) -> bytes:
        await trio.sleep(random.random() / 1000)  # finish out of order
        return BLOB[start:end]

    async with trio.open_nursery() as nursery:
        h = OrderedHash(nursery=nursery)
        units = fixed_units(len(BLOB), 3000)
        reader = UnitReader(units, fetch, None, nursery, max_range=9000, on_fetched=h.add)
        async with contextlib.aclosing(reader.iter_range(0, len(BLOB), keep=False)) as chunks:
            got = b"".join([bytes(c) async for c in chunks])
        assert got == BLOB
        await h.verify(len(BLOB), DIGEST)
        reader.close()
