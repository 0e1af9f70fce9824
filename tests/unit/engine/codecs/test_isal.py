"""ISA-L's fast path for resuming gzip spans, against libz/zlib-ng on the same spans.

``make setup`` installs libisal2, so the fast path is expected here; zran's
own tests (test_zran.py) run through it too. Each test below makes sure
which path answered.
"""

from __future__ import annotations

import ctypes
import gzip
import random
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from r8imfs.engine.codecs import isal, libdeflate, zran
from r8imfs.errors import CorruptLayer
from tests.helpers.tars import MiB, big_tar, payload


def _spans(blob: bytes, raw_len: int, span: int) -> list[tuple[zran.Checkpoint, bytes, int]]:
    b = zran.CheckpointBuilder(span)
    b.feed(blob)
    b.finish()
    cps = b.checkpoints
    out = []
    for k, cp in enumerate(cps):
        nxt = cps[k + 1] if k + 1 < len(cps) else None
        out.append(
            (
                cp,
                blob[cp.start : nxt.cin if nxt else len(blob)],
                (nxt.out if nxt else raw_len) - cp.out,
            )
        )
    return out


def _fast(
    cp: zran.Checkpoint,
    data: bytes,
    size: int,
    end_bits: int | None = None,
    *,
    lib: Any = isal,
) -> bytes | None:
    """ISA-L's (or ``lib``'s: ``libdeflate``) ``size`` bytes from ``cp`` over
    ``data`` (with ``end_bits``: also accepted as ending at a block boundary
    there); None if it refused."""
    skip = 1 if cp.bits else 0
    if size <= 0 or len(data) <= skip:
        return None
    src = ctypes.create_string_buffer(data, len(data))
    out = ctypes.create_string_buffer(size)
    got = lib.inflate(
        cp.bits,
        data[0],
        cp.window,
        ctypes.addressof(src) + skip,
        len(data) - skip,
        ctypes.addressof(out),
        size,
        end_bits=end_bits,
    )
    return out.raw if got == size else None


def _spy_on_isal(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """What each ``isal.inflate`` call answers, from now on, in order."""
    calls: list[int | None] = []
    real = isal.inflate

    def spy(*args: int | bytes, **kwargs: int | None) -> int | None:
        got = real(*args, **kwargs)  # type: ignore[arg-type]
        calls.append(got)
        return got

    monkeypatch.setattr(isal, "inflate", spy)
    return calls


def test_isal_is_there() -> None:
    assert isal.available, "libisal2 missing or failing its self-test: run make setup"


@pytest.mark.parametrize("level", [1, 6, 9])
def test_every_span_resumes_to_the_same_bytes_as_libz(level: int) -> None:
    rng = random.Random(level)
    raw = big_tar(2 * MiB, seed=level) + rng.randbytes(300_000) + payload(400_000, seed=level)
    blob = gzip.compress(raw, compresslevel=level, mtime=0)
    spans = _spans(blob, len(raw), 64 * 1024)
    assert sum(1 for cp, _, _ in spans if cp.bits) > len(spans) // 2, "mid-byte starts"
    for cp, data, size in spans:
        want = raw[cp.out : cp.out + size]
        assert _fast(cp, data, size) == want, f"ISA-L, span at {cp.out}"
        assert zran.inflate_from(cp, data, 0, size) == want


def test_a_span_across_a_member_end_falls_back_to_libz(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [payload(300_000, seed=1), payload(300_000, seed=2)]
    blob = b"".join(gzip.compress(p, mtime=0) for p in parts)
    raw = b"".join(parts)
    cp, data, _ = _spans(blob, len(raw), 1 << 30)[0]
    assert _fast(cp, data, len(raw)) is None  # ISA-L stops at the first member's end
    assert zran.inflate_from(cp, data, 0, len(raw)) == raw


def test_an_invalid_block_is_corrupt_through_either_path() -> None:
    """(Raw deflate has no check of its own: a flipped literal inflates to wrong
    bytes on either library; the span and blob digests catch those.)"""
    raw = payload(1 * MiB, seed=3)
    blob = gzip.compress(raw, mtime=0)
    cp, data, size = _spans(blob, len(raw), 1 << 30)[0]
    assert cp.bits == 0
    bad = b"\x07" + data[1:]  # BFINAL 1, BTYPE 11: a reserved block type
    assert _fast(cp, bad, size) is None
    with pytest.raises(CorruptLayer):
        zran.inflate_from(cp, bad, 0, size)


def test_zran_takes_the_fast_path_and_libz_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = big_tar(1 * MiB, seed=9)
    blob = gzip.compress(raw, mtime=0)
    calls = _spy_on_isal(monkeypatch)
    spans = _spans(blob, len(raw), 128 * 1024)
    via_isal = [zran.inflate_from(cp, memoryview(d), 0, n) for cp, d, n in spans]
    assert calls and all(calls)
    monkeypatch.setattr(isal, "available", False)
    calls.clear()
    via_libz = [zran.inflate_from(cp, memoryview(d), 0, n) for cp, d, n in spans]
    assert not calls
    assert via_isal == via_libz == [raw[cp.out : cp.out + n] for cp, _, n in spans]


# -- where a span ends: ISA-L's state against libz's Z_BLOCK stops ------------------


def _boundaries(raw_stream: bytes) -> set[tuple[int, int, int]]:
    """Every deflate block boundary of a raw stream, as libz stops at them:
    (first full byte, bits left in the byte before, output so far)."""
    z = zran._Inflater(zran._RAW)
    src = ctypes.create_string_buffer(raw_stream, len(raw_stream))
    out = ctypes.create_string_buffer(1 << 20)
    z.strm.next_in, z.strm.avail_in = ctypes.addressof(src), len(raw_stream)
    found: set[tuple[int, int, int]] = set()
    made = 0
    try:
        while True:
            z.strm.next_out, z.strm.avail_out = ctypes.addressof(out), len(out)
            ret = z.inflate(zran.Z_BLOCK)
            made += len(out) - z.strm.avail_out
            dt = z.strm.data_type
            if dt & 128 and not dt & 64:
                found.add((len(raw_stream) - z.strm.avail_in, dt & 7, made))
            if ret == 1:  # Z_STREAM_END
                return found
            assert ret == 0, ret
    finally:
        z.close()


Boundary = tuple[int, int, int]


def _checkpoints(
    raw: bytes, stream: bytes
) -> tuple[set[Boundary], list[Boundary], list[zran.Checkpoint]]:
    """A stream's block boundaries (as a set, and in stream order) and a
    checkpoint at each but the last, its window the output before it."""
    truth = _boundaries(stream)
    ordered = sorted(truth, key=lambda t: (t[0] * 8 - t[1], t[2]))
    padded = bytes(zran.WINDOW) + raw
    cps = [
        zran.Checkpoint(cin, out, bits, padded[out : out + zran.WINDOW])
        for cin, bits, out in [(0, 0, 0), *ordered[:-1]]
    ]
    return truth, ordered, cps


def _probes(
    ordered: list[Boundary], cps: list[zran.Checkpoint]
) -> Iterator[tuple[zran.Checkpoint, Boundary, Boundary]]:
    """(checkpoint, an end to try, the true end it is near): the next three
    true ends after each checkpoint, shifted by a byte, any bit and an
    output byte either way."""
    for cp in cps:
        after = [t for t in ordered if t[0] * 8 - t[1] > cp.cin * 8 - cp.bits and t[2] > cp.out]
        for cin, bits, out in after[:3]:
            for dc in (-1, 0, 1):
                for b_ in range(8):
                    for dout in (-1, 0, 1):
                        yield cp, (cin + dc, b_, out + dout), (cin, bits, out)


def _streams() -> list[tuple[str, bytes, bytes]]:
    """Raw deflate streams with every kind of block and boundary: dynamic and
    fixed Huffman blocks, stored blocks (random bytes), and the empty stored
    blocks of sync and full flushes (two boundaries at the same output)."""
    rng = random.Random(5)
    out = []
    for name, level, mem, strategy in (  # a small memLevel: small blocks, many boundaries
        ("level 1", 1, 2, zlib.Z_DEFAULT_STRATEGY),
        ("level 9", 9, 3, zlib.Z_DEFAULT_STRATEGY),
        ("fixed", 6, 2, zlib.Z_FIXED),
        ("huffman only", 6, 8, zlib.Z_HUFFMAN_ONLY),
    ):
        packer = zlib.compressobj(level, zlib.DEFLATED, -15, mem, strategy)
        raw = bytearray()
        parts = []
        for k in range(12):
            piece = (
                rng.randbytes(rng.randrange(1, 40_000))
                if k % 3 == 1
                else payload(rng.randrange(1, 120_000), seed=k)
            )
            raw += piece
            parts.append(packer.compress(piece))
            if k % 4 == 3:
                parts.append(packer.flush(zlib.Z_SYNC_FLUSH if k % 8 == 3 else zlib.Z_FULL_FLUSH))
        parts.append(packer.flush())
        out.append((name, bytes(raw), b"".join(parts)))
    return out


def _ends_at(cp: zran.Checkpoint, stream: bytes, cin: int, bits: int, size: int) -> bytes | None:
    """ISA-L's span from ``cp`` given input up to ``cin`` and ``size`` bytes of room,
    accepted as ending at a boundary with ``bits`` left; its output, or None."""
    return _fast(cp, stream[cp.start : cin], size, end_bits=bits)


def test_boundary_check_is_there() -> None:
    assert isal.boundary_check, "ISA-L's state layout is not 2.30's: run make setup"


@pytest.mark.parametrize(("name", "raw", "stream"), _streams(), ids=[s[0] for s in _streams()])
def test_an_accepted_span_end_is_a_block_boundary_libz_finds(
    name: str, raw: bytes, stream: bytes
) -> None:
    """Soundness: from every checkpoint, ISA-L accepts an end (input cut, bits
    left, output size) only where libz stops at a block boundary with that
    output, and then made the stream's own bytes. Completeness, the speed: it
    accepts most true ends."""
    truth, ordered, cps = _checkpoints(raw, stream)
    assert len(cps) > 30
    cps = cps[:: max(1, len(cps) // 40)]
    refused_true = []
    for cp, end, true_end in _probes(ordered, cps):
        got = _ends_at(cp, stream, end[0], end[1], end[2] - cp.out)
        if got is None:
            if end == true_end:
                refused_true.append(end)
            continue
        assert end in truth, f"{name}: accepted {end}, not a boundary"
        assert got == raw[cp.out : end[2]]
    # ISA-L reads the 3-bit header of a fixed-Huffman block as soon as it can
    # (it needs nothing more), so its state no longer says where that block
    # began: those ends are refused (libz does the span), and only those.
    assert all(_block_type(stream, cin * 8 - bits) == 1 for cin, bits, _ in refused_true)


def _block_type(stream: bytes, bit: int) -> int:
    """BTYPE of the deflate block whose header starts at bit ``bit``."""
    word = int.from_bytes(stream[bit // 8 : bit // 8 + 2], "little") >> (bit % 8)
    return (word >> 1) & 3


def _tar_with_checkpoints() -> tuple[bytes, bytes, list[zran.Checkpoint]]:
    """A 1 MiB tar, its gzip, and checkpoints every 128 KiB of it."""
    raw = big_tar(1 * MiB, seed=11)
    blob = gzip.compress(raw, mtime=0)
    b = zran.CheckpointBuilder(128 * 1024)
    b.feed(blob)
    b.finish()
    return raw, blob, b.checkpoints


def test_spanstream_spans_take_the_checked_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``inflate_into`` with ``end`` (what extract through a zTOC does) is answered
    by ISA-L, and a checkpoint a bit off is refused by both paths."""
    raw, blob, cps = _tar_with_checkpoints()
    monkeypatch.setattr(libdeflate, "available", False)  # (it goes first: test_libdeflate.py)
    calls = _spy_on_isal(monkeypatch)
    for cp, nxt in zip(cps, cps[1:], strict=False):
        out = bytearray(nxt.out - cp.out)
        assert zran.inflate_into(cp, blob[cp.start : nxt.cin], out, end=nxt) == len(out)
        assert out == raw[cp.out : nxt.out]
    assert len(calls) == len(cps) - 1 and all(calls)
    cp, nxt = cps[1], cps[2]
    for wrong in (
        zran.Checkpoint(nxt.cin, nxt.out, (nxt.bits + 1) % 8, nxt.window),
        zran.Checkpoint(nxt.cin + 1, nxt.out, nxt.bits, nxt.window),
    ):
        calls.clear()
        with pytest.raises(CorruptLayer):
            zran.inflate_into(
                cp, blob[cp.start : wrong.cin], bytearray(nxt.out - cp.out), end=wrong
            )
        assert calls == [None]
