"""``zstdstream``: a zstd stream cut into frames as it arrives, decoded on a pool."""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import zstandard

from r8imfs.engine.codecs.zstdstream import Kind, cut_frames, decode_frames
from r8imfs.errors import CorruptLayer

POOL = ThreadPoolExecutor(2)


def skippable(payload: bytes, nibble: int = 0xE) -> bytes:
    return struct.pack("<II", 0x184D2A50 | nibble, len(payload)) + payload


def frame(data: bytes, *, size: bool = True, checksum: bool = True, level: int = 3) -> bytes:
    """One zstd frame; without ``size`` its header leaves the content size out."""
    params = zstandard.ZstdCompressor(level=level, write_content_size=size, write_checksum=checksum)
    if size:
        return params.compress(data)
    obj = params.compressobj()  # streamed: the size is not known up front
    return obj.compress(data) + obj.flush()


def content(n: int, seed: int) -> bytes:
    """Half random (stored blocks), half repetitive (compressed and RLE blocks)."""
    rnd = random.Random(seed).randbytes(n // 2)
    return rnd + bytes([seed % 251]) * (n - n // 2)


def split(blob: bytes, seed: int) -> Iterator[bytes]:
    """The blob in chunks of random sizes, some of one byte, some empty."""
    rng = random.Random(seed)
    pos = 0
    while pos < len(blob):
        n = rng.choice([0, 1, 2, 3, 7, 500, 4096, 70_000, 300_000])
        yield blob[pos : pos + n]
        pos += n


def decode(blob: bytes, seed: int = 0, whole_max: int = 1 << 24) -> bytes:
    return b"".join(decode_frames(split(blob, seed), POOL, whole_max=whole_max))


PARTS = [content(n, i) for i, n in enumerate([0, 1, 255, 256, 257, 65_536, 300_000, 1 << 20])]


@pytest.mark.parametrize("seed", range(4))
def test_frames_and_skippable_frames_decode_to_the_stream_in_order(seed: int) -> None:
    blob = skippable(b"toc" * 100) + frame(b"")  # an empty frame of declared size 0
    for i, part in enumerate(PARTS):
        blob += frame(part, size=i % 3 != 0, checksum=i % 2 == 0)
        if i % 4 == 1:
            blob += skippable(os.urandom(i * 100), nibble=i)
    assert decode(blob, seed) == b"".join(PARTS)


def test_frames_of_known_size_are_whole_others_are_streamed_in_parts() -> None:
    big = content(3 << 20, 9)
    blob = frame(PARTS[6]) + frame(big, size=False) + frame(big) + skippable(b"x")
    pieces = list(cut_frames(split(blob, 1), whole_max=1 << 20))
    whole = [p for p in pieces if p.kind is Kind.WHOLE]
    parts = [p for p in pieces if p.kind is Kind.PART]
    assert [p.size for p in whole] == [len(PARTS[6])]
    assert len(parts) > 2 and parts[0].first and parts[-1].last
    assert sum(p.first for p in parts) == 2 and sum(p.last for p in parts) == 2
    assert decode(blob, 1, whole_max=1 << 20) == PARTS[6] + big + big


def test_a_layer_that_is_one_big_frame_is_streamed_within_bounded_memory() -> None:
    big = content(6 << 20, 3)
    pieces = list(cut_frames(split(frame(big), 2), whole_max=1 << 20))
    assert all(p.kind is Kind.PART for p in pieces)
    assert max(sum(len(v) for v in p.data) for p in pieces) < 2 << 20


@pytest.mark.parametrize("cut", [1, 4, 7, 9, 100, 70_000, -5, -1])
def test_a_stream_cut_anywhere_inside_a_frame_is_corrupt(cut: int) -> None:
    blob = frame(PARTS[6]) + frame(PARTS[7])
    end = cut if cut > 0 else len(blob) + cut
    with pytest.raises(CorruptLayer, match="ends inside the frame"):
        decode(blob[:end])


def test_a_cut_skippable_frame_is_corrupt() -> None:
    blob = frame(PARTS[5]) + skippable(b"x" * 1000)
    with pytest.raises(CorruptLayer, match="ends inside"):
        decode(blob[:-10])


@pytest.mark.parametrize("junk", [b"\0" * 16, b"PK\x03\x04 not zstd", os.urandom(64)])
def test_bytes_that_are_not_a_frame_are_corrupt(junk: bytes) -> None:
    with pytest.raises(CorruptLayer):
        decode(frame(PARTS[4]) + junk)


@pytest.mark.parametrize("size", [True, False])
def test_a_flipped_byte_fails_the_frame_checksum(size: bool) -> None:
    blob = bytearray(frame(PARTS[6], size=size))
    blob[len(blob) // 2] ^= 0x40  # inside a stored block: only the checksum can tell
    with pytest.raises(CorruptLayer, match="does not decompress|ends early"):
        decode(bytes(blob))


@pytest.mark.parametrize("delta", [-1, 1])
@pytest.mark.parametrize("part", [PARTS[4], PARTS[5], PARTS[6]])
def test_a_header_that_lies_about_its_size_is_corrupt(part: bytes, delta: int) -> None:
    blob = bytearray(frame(part, checksum=False))
    fhd = blob[4]
    single = bool(fhd & 0x20)
    n = (int(single), 2, 4, 8)[fhd >> 6]
    at = 5 + (not single)  # no dictionary id
    declared = int.from_bytes(blob[at : at + n], "little") + (256 if n == 2 else 0)
    assert declared == len(part)
    blob[at : at + n] = (declared + delta - (256 if n == 2 else 0)).to_bytes(n, "little")
    with pytest.raises(CorruptLayer):
        decode(bytes(blob))


def test_closing_early_drops_the_frames_in_flight() -> None:
    blob = b"".join(frame(content(1 << 20, i)) for i in range(12))
    stream = decode_frames(split(blob, 3), POOL, ahead=4 << 20)
    assert len(next(stream)) == 1 << 20
    stream.close()
