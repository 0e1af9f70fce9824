"""``decompress.HashedChunks``: the chunks of a blob, each hashed as it passes, uncopied."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable

import pytest

from r8imfs.engine.codecs.decompress import BackgroundHash, HashedChunks, Readable
from r8imfs.engine.tarindex import ForwardFile

DATA = os.urandom(3 * 1024 * 1024 + 4321)
CUT = [0, 10, 70_000, 300_001, 1 << 20, 2_000_000, len(DATA)]


def forward() -> ForwardFile:
    return ForwardFile(iter([DATA[a:b] for a, b in zip(CUT, CUT[1:], strict=False)]))


@pytest.mark.parametrize("raw", [forward, lambda: io.BytesIO(DATA)])
def test_every_byte_is_handed_on_and_hashed_once(raw: Callable[[], Readable]) -> None:
    hashed = HashedChunks(raw())
    assert b"".join(hashed) == DATA
    assert hashed.size == len(DATA)
    assert hashed.hash.hexdigest() == hashlib.sha256(DATA).hexdigest()


def test_the_chunks_are_views_of_the_file_own_chunks() -> None:
    views = list(HashedChunks(forward()))
    assert [len(v) for v in views] == [b - a for a, b in zip(CUT, CUT[1:], strict=False)]
    assert all(isinstance(v, memoryview) for v in views)


def test_drain_hashes_what_the_decoder_left() -> None:
    hashed = HashedChunks(forward())
    next(hashed)
    next(hashed)
    hashed.drain()
    assert hashed.size == len(DATA)
    assert hashed.hash.hexdigest() == hashlib.sha256(DATA).hexdigest()


@pytest.mark.parametrize("size", [100, BackgroundHash.PIECE, 4 * BackgroundHash.PIECE + 3])
def test_background_hash_of_chunks_of_any_size(size: int) -> None:
    """Big inputs are queued in pieces (bounding the queue in bytes): the digest
    is the whole input's, for bytes and views, whatever the cut."""
    data = os.urandom(3 * size + 17)
    h = BackgroundHash()
    for i, start in enumerate(range(0, len(data), size)):
        piece = data[start : start + size]
        h.update(memoryview(piece) if i % 2 else piece)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
