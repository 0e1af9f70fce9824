"""zran checkpoints through libz: built in one pass, resumable, SOCI's span rule."""

from __future__ import annotations

import gzip
import hashlib
import random
import zlib

import pytest

from r8imfs.engine.codecs import zran
from r8imfs.errors import CorruptLayer
from tests.helpers.tars import MiB, big_tar, payload

SPAN = 256 * 1024


def _gzip(data: bytes, level: int = 6) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


def _build(
    blob: bytes, span: int = SPAN, chunk: int = 1 << 20
) -> tuple[zran.CheckpointBuilder, bytes]:
    b = zran.CheckpointBuilder(span, out_buffer=1 << 18)
    out = []
    for i in range(0, len(blob), chunk):
        out += b.feed(blob[i : i + chunk])
    b.finish()
    return b, b"".join(out)


def _mixed(seed: int) -> bytes:
    """Text, noise and runs of zeros: dynamic, fixed and (level 0) stored blocks."""
    rng = random.Random(seed)
    parts = []
    for _ in range(30):
        parts.append(payload(rng.randint(1, 120_000), seed=rng.randint(0, 99)))
        parts.append(rng.randbytes(rng.randint(1, 60_000)))
        parts.append(bytes(rng.randint(0, 90_000)))
    return b"".join(parts)


def _check_all(blob: bytes, raw: bytes, b: zran.CheckpointBuilder) -> None:
    cps = b.checkpoints
    assert cps[0].out == 0
    assert len(b.span_digests) == len(cps)
    for k, cp in enumerate(cps):
        cend = cps[k + 1].cin if k + 1 < len(cps) else len(blob)
        uend = cps[k + 1].out if k + 1 < len(cps) else len(raw)
        assert cp.window == raw[max(0, cp.out - zran.WINDOW) : cp.out].rjust(zran.WINDOW, b"\0")
        got = zran.inflate_from(cp, blob[cp.start : cend], 0, uend - cp.out)
        assert got == raw[cp.out : uend], f"span {k}"
        assert b.span_digests[k] == "sha256:" + hashlib.sha256(blob[cp.start : cend]).hexdigest()


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_every_checkpoint_resumes_to_the_gunzip_bytes(level: int) -> None:
    raw = _mixed(level)
    blob = _gzip(raw, level)
    b, out = _build(blob)
    assert out == raw == gzip.decompress(blob)
    assert b.total_in == len(blob) and b.total_out == len(raw)
    assert len(b.checkpoints) > 3
    _check_all(blob, raw, b)


def test_checkpoints_with_bits_are_resumed_with_inflate_prime() -> None:
    raw = big_tar(3 * MiB, seed=5)
    blob = _gzip(raw)
    b, _ = _build(blob, span=64 * 1024)
    assert any(cp.bits for cp in b.checkpoints), "deflate blocks end mid-byte"
    _check_all(blob, raw, b)


def test_span_rule_is_more_than_span_bytes_between_checkpoints() -> None:
    raw = _mixed(3)
    b, _ = _build(_gzip(raw))
    outs = [cp.out for cp in b.checkpoints]
    assert all(later - earlier > SPAN for earlier, later in zip(outs, outs[1:], strict=False))
    assert b.checkpoints[0].cin == 10  # just after a 10-byte gzip header


def test_chunking_does_not_move_checkpoints() -> None:
    blob = _gzip(_mixed(4))
    one, _ = _build(blob, chunk=len(blob))
    for chunk in (1, 7, 4096, 65_537):
        other, _ = _build(blob, chunk=chunk)
        assert other.checkpoints == one.checkpoints
        assert other.span_digests == one.span_digests


def test_concatenated_members_are_followed_and_resumed_across() -> None:
    parts = [_mixed(7)[:700_000], _mixed(8)[:900_000], b"", _mixed(9)[:500_000]]
    blob = b"".join(_gzip(p, level) for p, level in zip(parts, (6, 0, 6, 1), strict=True))
    raw = b"".join(parts)
    b, out = _build(blob)
    assert out == raw
    _check_all(blob, raw, b)
    first = b.checkpoints[0]
    assert zran.inflate_from(first, blob[first.start :], 0, len(raw)) == raw


def test_inflate_from_skips_inside_a_span() -> None:
    raw = _mixed(11)
    blob = _gzip(raw)
    b, _ = _build(blob)
    cp = b.checkpoints[1]
    assert zran.inflate_from(cp, blob[cp.start :], 12_345, 1000) == raw[cp.out + 12_345 :][:1000]


def test_truncated_stream_is_corrupt() -> None:
    blob = _gzip(_mixed(12))
    b = zran.CheckpointBuilder(SPAN)
    b.feed(blob[: len(blob) // 2])
    with pytest.raises(CorruptLayer, match="truncated"):
        b.finish()


def test_corrupt_stream_is_corrupt() -> None:
    blob = bytearray(_gzip(_mixed(13)))
    blob[len(blob) // 3 : len(blob) // 3 + 64] = bytes(range(64))
    with pytest.raises(CorruptLayer):
        _build(bytes(blob))


def test_short_span_data_is_corrupt_not_short_output() -> None:
    raw = _mixed(14)
    blob = _gzip(raw)
    b, _ = _build(blob)
    cp = b.checkpoints[1]
    with pytest.raises(CorruptLayer, match="ends before"):
        zran.inflate_from(cp, blob[cp.start : cp.start + 100], 0, 1 << 20)


def test_zlib_agrees_on_the_stream_end() -> None:
    raw = _mixed(15)
    blob = _gzip(raw)
    b, out = _build(blob)
    assert out == zlib.decompress(blob, 31)


def test_inflate_into_checks_each_span_ends_at_the_next_checkpoint() -> None:
    parts = [_mixed(21)[:700_000], big_tar(1 * MiB, seed=6), _mixed(22)[:500_000]]
    blob = b"".join(_gzip(p, level) for p, level in zip(parts, (6, 0, 9), strict=True))
    raw = b"".join(parts)
    b, _ = _build(blob, span=64 * 1024)
    cps = b.checkpoints
    assert any(cp.bits for cp in cps)
    view = memoryview(blob)  # read-only slices, read in place
    for k, (cp, nxt) in enumerate(zip(cps, cps[1:], strict=False)):
        out = bytearray(nxt.out - cp.out)
        assert zran.inflate_into(cp, view[cp.start : nxt.cin], out, end=nxt) == len(out)
        assert out == raw[cp.out : nxt.out], f"span {k}"


@pytest.mark.parametrize("lie", ["bits", "cin", "out"])
def test_inflate_into_refuses_a_checkpoint_that_is_not_where_the_data_stops(lie: str) -> None:
    raw = big_tar(2 * MiB, seed=7)
    blob = _gzip(raw)
    b, _ = _build(blob, span=128 * 1024)
    cp, nxt = b.checkpoints[2], b.checkpoints[3]
    size = nxt.out - cp.out
    if lie == "bits":
        nxt = zran.Checkpoint(nxt.cin, nxt.out, (nxt.bits + 1) % 8, nxt.window)
    elif lie == "cin":
        nxt = zran.Checkpoint(nxt.cin - 1, nxt.out, nxt.bits, nxt.window)
    else:
        size -= 1000  # the span said to end 1000 bytes early: inside a block
    with pytest.raises(CorruptLayer, match="does not end at the next checkpoint"):
        zran.inflate_into(cp, blob[cp.start : b.checkpoints[3].cin], bytearray(size), end=nxt)


def test_gzip_header_end() -> None:
    blob = gzip.compress(b"x" * 1000, mtime=0)
    assert zran.gzip_header_end(blob) == 10
    with_name = blob[:3] + bytes([blob[3] | 8]) + blob[4:10] + b"model.tar\0" + blob[10:]
    assert zran.gzip_header_end(with_name) == 20
    assert zran.gzip_header_end(blob[:7]) is None


def test_the_last_span_must_hold_only_zeros_after_the_tar_up_to_the_stream_end() -> None:
    raw = big_tar(1 * MiB, seed=8)
    assert raw.endswith(bytes(1024))
    blob = _gzip(raw) + bytes(7)  # zeros after the member, as some producers leave
    b, _ = _build(_gzip(raw), span=128 * 1024)
    cp = b.checkpoints[-1]
    tail = blob[cp.start :]
    tar_end = len(raw) - 1024  # where the end-of-archive blocks begin
    out = bytearray(tar_end - cp.out)
    assert zran.inflate_into(cp, tail, out, to_end=True) == len(out)
    assert out == raw[cp.out : tar_end]
    with pytest.raises(CorruptLayer, match="goes on with data after the tar's end"):
        zran.inflate_into(cp, tail, bytearray(tar_end - 5000 - cp.out), to_end=True)
    with pytest.raises(CorruptLayer):
        zran.inflate_into(cp, tail[:-20], out, to_end=True)  # the trailer cut off
