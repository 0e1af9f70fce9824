"""The blob's hash and its block hashes, made on two threads, are those of one pass."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from r8imfs.cache import _blobfiles as files
from r8imfs.cache._ranges import BlockHasher
from r8imfs.oci import digest as _digest

BLOCK = 64 * 1024


def _expected(data: bytes) -> tuple[str, tuple[str, ...]]:
    blocks = tuple(
        hashlib.sha256(data[i : i + BLOCK]).hexdigest() for i in range(0, len(data), BLOCK)
    )
    return "sha256:" + hashlib.sha256(data).hexdigest(), blocks


@pytest.mark.parametrize(
    "piece", [1000, files.SIDE_MIN - 1, files.SIDE_MIN, 3 * files.SIDE_MIN + 7]
)
def test_hash_bytes_in_pieces(piece: int) -> None:
    """Pieces under and over ``SIDE_MIN`` (one thread, two), cut across blocks."""
    data = random.Random(piece).randbytes(5 * files.SIDE_MIN + 12345)
    hasher, blocks = _digest.Hasher("sha256"), BlockHasher(BLOCK)
    for i in range(0, len(data), piece):
        files.hash_bytes(memoryview(data)[i : i + piece], hasher, blocks)
    assert (hasher.digest, blocks.hashes()) == _expected(data)


def test_hash_file_and_pwrite_hash(tmp_path: Path) -> None:
    data = os.urandom(3 * files.SIDE_MIN + 99)
    fd = os.open(tmp_path / "blob", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        hasher, blocks = _digest.Hasher("sha256"), BlockHasher(BLOCK)
        files.pwrite_hash(fd, bytearray(data), 0, hasher, blocks)
        assert (hasher.digest, blocks.hashes()) == _expected(data)
        hasher, blocks = _digest.Hasher("sha256"), BlockHasher(BLOCK)
        files.hash_file(fd, 0, len(data), hasher, blocks)
        assert (hasher.digest, blocks.hashes()) == _expected(data)
        hasher = _digest.Hasher("sha256")
        files.hash_file(fd, 0, len(data), hasher, None)
        assert hasher.digest == _expected(data)[0]
    finally:
        os.close(fd)
