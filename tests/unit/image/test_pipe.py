"""``pipe.consume_stream``: chunks joined before they cross, optional hashing on the way."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from typing import IO

from r8imfs.image.pipe import PIECE, Chunk, batches, consume_stream
from r8imfs.oci.digest import Hasher


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_pieces_are_joined_and_everything_arrives() -> None:
    data = os.urandom(3 * PIECE + 12345)

    def read_all(f: IO[bytes]) -> bytes:
        out = []
        while chunk := f.read(PIECE // 2):
            out.append(chunk)
        return b"".join(out)

    assert await consume_stream(_chunks(data, 16 * 1024), read_all) == data


async def test_hasher_sees_every_byte() -> None:
    data = os.urandom(2 * PIECE + 7)
    hasher = Hasher()

    def drain(f: IO[bytes]) -> int:
        n = 0
        while chunk := f.read(65536):
            n += len(chunk)
        return n

    assert await consume_stream(_chunks(data, 65536), drain, hasher=hasher) == len(data)
    assert hasher.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert hasher.size == len(data)


async def _collect(sizes: list[int]) -> tuple[bytes, list[list[Chunk]]]:
    data = os.urandom(sum(sizes))

    async def source() -> AsyncIterator[bytes]:
        pos = 0
        for n in sizes:
            yield data[pos : pos + n]
            pos += n

    return data, [b async for b in batches(source(), size=1000, small=100)]


async def test_batches_keep_order_and_join_only_runs_of_small_chunks() -> None:
    sizes = [10, 20, 30, 500, 5, 5, 200, 60, 50, 1, 700, 99, 3000, 7, 8]
    data, got = await _collect(sizes)
    flat = [c for b in got for c in b]
    assert b"".join(flat) == data
    # big chunks pass as they are; small ones are joined into runs of at least 100 bytes
    assert [len(c) for c in flat] == [60, 500, 10, 200, 110, 1, 700, 99, 3000, 15]
    assert all(sum(map(len, b)) >= 1000 for b in got[:-1])


async def test_back_pressure_counts_bytes_not_chunks() -> None:
    """Chunks bigger than ``PIECE`` (a blob read 4 MiB at a time) queue no more
    bytes than ``buffer`` pieces' worth, plus the chunk that crossed the line."""
    chunk, count, buffer = 4 * PIECE, 16, 4
    sent = 0
    ahead: list[int] = []

    async def source() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(count):
            sent += chunk
            yield bytes(chunk)

    def slow(f: IO[bytes]) -> int:
        got = 0
        while data := f.read(PIECE):
            got += len(data)
            ahead.append(sent - got)
            time.sleep(0.002)  # a consumer slower than the source
        return got

    assert await consume_stream(source(), slow, buffer=buffer) == chunk * count
    # queued: under buffer * PIECE, then one more chunk; besides, the chunk the
    # consumer is reading and the one the pump holds while it waits for room
    assert max(ahead) <= buffer * PIECE + 3 * chunk
