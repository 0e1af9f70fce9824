"""libdeflate's fast path for whole gzip spans, against libz on the same spans.

``make setup`` installs libdeflate0, so the path is expected here. A span is
made a stream of its own by editing the input (``libdeflate``'s doc): these
tests hold what it accepts to libz's block boundaries, on streams with every
kind of block, and keep the case where it accepts an end that is not one
(a cut inside a member's final block), which is why the checked path
(``zran.inflate_into`` with ``end``, extract's) does not use it.
"""

from __future__ import annotations

import ctypes
import gzip
import random
import zlib

import pytest

from r8imfs.engine.codecs import isal, libdeflate, zran
from r8imfs.errors import CorruptLayer
from tests.helpers.tars import MiB, big_tar, payload
from tests.unit.engine.codecs.test_isal import _boundaries, _spans, _streams


def _fast(cp: zran.Checkpoint, data: bytes, size: int, end_bits: int) -> bytes | None:
    """libdeflate's ``size`` bytes from ``cp`` over ``data`` (which ends at the
    next checkpoint's first full byte, ``end_bits`` bits of it the next
    block's); None if it refused."""
    skip = 1 if cp.bits else 0
    if size <= 0 or len(data) <= skip:
        return None
    src = ctypes.create_string_buffer(data, len(data))
    out = ctypes.create_string_buffer(size)
    got = libdeflate.inflate(
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


def test_libdeflate_is_there() -> None:
    assert libdeflate.available, "libdeflate0 missing or failing its self-test: run make setup"


def test_the_empty_blocks_land_on_every_bit() -> None:
    """Each pad is empty non-final blocks ending ``t`` bits into its last byte:
    followed by a final empty block there, libz reads it all, outputs nothing."""
    for t, (pad, fill) in enumerate(libdeflate._PADS):
        assert fill == t
        bits = len(pad) * 8 - ((8 - t) % 8 if t else 0)
        stream = int.from_bytes(pad, "little") | libdeflate._FINAL << bits
        d = zlib.decompressobj(-15)
        assert d.decompress(stream.to_bytes((bits + 17) // 8, "little")) == b""
        assert d.eof, t


@pytest.mark.parametrize("level", [1, 6, 9])
def test_every_span_resumes_to_the_same_bytes_as_libz(level: int) -> None:
    rng = random.Random(level)
    raw = big_tar(2 * MiB, seed=level) + rng.randbytes(300_000) + payload(400_000, seed=level)
    blob = gzip.compress(raw, compresslevel=level, mtime=0)
    b = zran.CheckpointBuilder(64 * 1024)
    b.feed(blob)
    b.finish()
    cps = b.checkpoints
    assert sum(1 for cp in cps if cp.bits) > len(cps) // 2, "mid-byte starts"
    assert {cp.bits for cp in cps} == set(range(8)), "every start bit"
    for cp, nxt in zip(cps, cps[1:], strict=False):
        want = raw[cp.out : nxt.out]
        assert _fast(cp, blob[cp.start : nxt.cin], len(want), nxt.bits) == want, cp.out


@pytest.mark.parametrize(("name", "raw", "stream"), _streams(), ids=[s[0] for s in _streams()])
def test_ends_it_accepts_around_boundaries_are_boundaries_libz_finds(
    name: str, raw: bytes, stream: bytes
) -> None:
    """From checkpoints across each stream, ends shifted by a byte, a bit or an
    output byte from the true ones: libdeflate accepts only ends where libz
    stops at a block boundary with that output, and then made the stream's
    own bytes; and it accepts every true end (ISA-L refuses those before
    fixed-Huffman blocks)."""
    truth = _boundaries(stream)
    ordered = sorted(truth, key=lambda t: (t[0] * 8 - t[1], t[2]))
    padded = bytes(zran.WINDOW) + raw
    cps = [
        zran.Checkpoint(cin, out, bits, padded[out : out + zran.WINDOW])
        for cin, bits, out in [(0, 0, 0), *ordered[:-1]]
    ]
    cps = cps[:: max(1, len(cps) // 40)]
    accepted_true = 0
    for cp in cps:
        after = [t for t in ordered if t[0] * 8 - t[1] > cp.cin * 8 - cp.bits and t[2] > cp.out]
        for cin, bits, out in after[:3]:
            for dc in (-1, 0, 1):
                for b_ in range(8):
                    for dout in (-1, 0, 1):
                        end = (cin + dc, b_, out + dout)
                        got = _fast(cp, stream[cp.start : end[0]], end[2] - cp.out, end[1])
                        if got is None:
                            assert end != (cin, bits, out), f"{name}: refused a true end {end}"
                            continue
                        assert end in truth, f"{name}: accepted {end}, not a boundary"
                        assert got == raw[cp.out : end[2]]
                        accepted_true += 1
    assert accepted_true >= len(cps)


def _flushed_then_finished() -> tuple[bytes, bytes, zran.Checkpoint, int]:
    """A raw stream ending with a full flush, then zlib's final block: an empty
    fixed-Huffman block (0x03 0x00). (data, stream, the checkpoint after the
    flush, the final block's first byte)."""
    data = payload(50_000, seed=4)
    packer = zlib.compressobj(6, zlib.DEFLATED, -15, 8, zlib.Z_FIXED)
    body = packer.compress(data) + packer.flush(zlib.Z_FULL_FLUSH)
    stream = body + packer.flush()
    assert stream[len(body) :] == b"\x03\x00"
    window = (bytes(zran.WINDOW) + data)[-zran.WINDOW :]
    return data, stream, zran.Checkpoint(len(body), len(data), 0, window), len(body)


def test_a_cut_inside_the_final_block_is_accepted_so_extract_does_not_use_it() -> None:
    """The case the edit cannot settle (module doc): a zTOC claiming the next
    checkpoint one byte into the final block, with 5 bytes more output.
    libdeflate reads the edited bits as a 5-byte match and accepts; the
    checked path extract uses (``inflate_into`` with ``end``) refuses."""
    data, stream, cp, final = _flushed_then_finished()
    lie = zran.Checkpoint(final + 1, len(data) + 5, 0, b"")
    assert _fast(cp, stream[cp.start : lie.cin], 5, 0) is not None
    with pytest.raises(CorruptLayer):
        zran.inflate_into(cp, stream[cp.start : lie.cin], bytearray(5), end=lie)


def test_a_cut_inside_a_final_stored_block_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one case the input edit alone does not settle: the edited bytes read
    as the data of the stream's own final stored block. Without the output
    check (``_echoes``) such a cut is accepted, with the edit in the output."""
    data = random.Random(1).randbytes(3000)
    packer = zlib.compressobj(0, zlib.DEFLATED, -15)  # level 0: stored blocks
    stream = packer.compress(data) + packer.flush()
    assert stream[0] & 7 == 1, "one final stored block"  # BFINAL 1, BTYPE 00
    start = zran.Checkpoint(0, 0, 0, b"")

    def accepted() -> list[tuple[int, int, int]]:
        found = []
        for cin in range(len(stream) - 4, len(stream) + 1):  # the edit ends the block
            for bits in range(8):
                for size in range(len(data) - 4, len(data) + 1):
                    if _fast(start, stream[:cin], size, bits) is not None:
                        found.append((cin, bits, size))
        return found

    assert accepted() == []
    monkeypatch.setattr(libdeflate, "_echoes", lambda out_tail, edited: False)
    assert accepted(), "the attack the check is there for"


def test_a_span_across_a_member_end_is_refused() -> None:
    parts = [payload(300_000, seed=1), payload(300_000, seed=2)]
    blob = b"".join(gzip.compress(p, mtime=0) for p in parts)
    cp, data, _ = _spans(blob, 600_000, 1 << 30)[0]
    assert _fast(cp, data + b"\0", 600_000, 0) is None


def test_a_corrupt_block_is_refused_and_libz_says_why() -> None:
    raw = payload(1 * MiB, seed=3)
    blob = gzip.compress(raw, mtime=0)
    b = zran.CheckpointBuilder(256 * 1024)
    b.feed(blob)
    b.finish()
    cp, nxt = b.checkpoints[1], b.checkpoints[2]
    span = bytearray(blob[cp.start : nxt.cin])
    span[len(span) // 2] ^= 0xFF
    assert _fast(cp, bytes(span), nxt.out - cp.out, nxt.bits) != raw[cp.out : nxt.out]
    out = bytearray(nxt.out - cp.out)
    try:
        zran.inflate_into(cp, bytes(span), out, end=nxt)
    except CorruptLayer:
        pass
    else:  # deflate has no check of its own: the span digests catch these
        assert out != raw[cp.out : nxt.out]


def test_zran_takes_it_only_for_hinted_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """``inflate_from`` with ``end_hint`` goes through libdeflate (ISA-L is not
    asked); without a hint, a wrong hint, or ``inflate_into``'s checked ``end``,
    the span is made another way, and the bytes are the same."""
    raw = big_tar(1 * MiB, seed=11)
    blob = gzip.compress(raw, mtime=0)
    b = zran.CheckpointBuilder(128 * 1024)
    b.feed(blob)
    b.finish()
    cps = b.checkpoints
    answers: list[int | None] = []
    real = libdeflate.inflate

    def spy(*args: int | bytes, **kwargs: int) -> int | None:
        answers.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return answers[-1]

    monkeypatch.setattr(libdeflate, "inflate", spy)
    monkeypatch.setattr(isal, "available", False)  # libz would answer in its place
    for cp, nxt in zip(cps, cps[1:], strict=False):
        want = raw[cp.out : nxt.out]
        view = memoryview(blob)[cp.start : nxt.cin]
        assert zran.inflate_from(cp, view, 0, len(want), end_hint=nxt) == want
    assert len(answers) == len(cps) - 1 and all(answers)
    answers.clear()
    cp, nxt = cps[1], cps[2]
    span, want = blob[cp.start : nxt.cin], raw[cp.out : nxt.out]
    assert zran.inflate_from(cp, span, 0, len(want)) == want
    out = bytearray(len(want))
    assert zran.inflate_into(cp, span, out, end=nxt) == len(out) and out == want
    assert answers == []
    wrong = zran.Checkpoint(nxt.cin, nxt.out, (nxt.bits + 1) % 8, nxt.window)
    assert zran.inflate_from(cp, span, 0, len(want), end_hint=wrong) == want
    assert answers == [None]
