"""libdeflate's fast path for whole gzip spans, against libz on the same spans.

``make setup`` installs libdeflate0, so the path is expected here. A span is
made a stream of its own by editing the input, with a random end marker
(``libdeflate``'s doc): these tests hold what it accepts to libz's block
boundaries, on streams with every kind of block, around each boundary and
at random cuts, and keep the case a fixed marker let through.
"""

from __future__ import annotations

import ctypes
import gzip
import random
import zlib

import pytest

from r8imfs.engine.codecs import isal, libdeflate, zran
from r8imfs.engine.codecs._native import address
from r8imfs.errors import CorruptLayer
from tests.helpers.tars import MiB, big_tar, payload
from tests.unit.engine.codecs.test_isal import (
    _checkpoints,
    _probes,
    _spans,
    _streams,
    _tar_with_checkpoints,
)
from tests.unit.engine.codecs.test_isal import _fast as isal_fast


def _fast(cp: zran.Checkpoint, data: bytes, size: int, end_bits: int) -> bytes | None:
    """libdeflate's ``size`` bytes from ``cp`` over ``data`` (which ends at the
    next checkpoint's first full byte, ``end_bits`` bits of it the next
    block's); None if it refused. Asked twice, the span copied and edited in
    place: every test here holds both ways to the same answers."""
    copied = isal_fast(cp, data, size, end_bits, lib=libdeflate)
    assert _in_place(cp, data, size, end_bits) == copied
    return copied


def _in_place(cp: zran.Checkpoint, data: bytes, size: int, end_bits: int) -> bytes | None:
    """``_fast`` with ``in_place``: the span between random rooms, which must
    not matter, and its bytes as they were afterwards."""
    skip = 1 if cp.bits else 0
    if size <= 0 or len(data) <= skip:
        return None
    rng = random.Random(len(data) * 8 + end_bits)
    before, after = rng.randbytes(libdeflate.ROOM_BEFORE), rng.randbytes(libdeflate.ROOM_AFTER)
    whole = bytearray(before + data + after)
    out = ctypes.create_string_buffer(size)
    got = libdeflate.inflate(
        cp.bits,
        data[0],
        cp.window,
        address(whole) + len(before) + skip,
        len(data) - skip,
        ctypes.addressof(out),
        size,
        end_bits=end_bits,
        in_place=True,
    )
    assert whole[len(before) : len(before) + len(data)] == data
    return out.raw if got == size else None


def test_libdeflate_is_there() -> None:
    assert libdeflate.available, "libdeflate0 missing or failing its self-test: run make setup"


def test_the_empty_blocks_land_on_every_bit() -> None:
    """Each pad is empty non-final blocks ending ``t`` bits into its last byte:
    followed by an empty final stored block there, libz reads it all and
    outputs nothing."""
    for t, (pad, fill) in enumerate(libdeflate._PADS):
        assert fill == t
        bits = (len(pad) - 1) * 8 + t if t else len(pad) * 8
        head = int.from_bytes(pad, "little") | 1 << bits  # BFINAL 1, BTYPE 00
        stream = head.to_bytes((bits + 3 + 7) // 8, "little") + b"\x00\x00\xff\xff"
        d = zlib.decompressobj(-15)
        assert d.decompress(stream) == b""
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
    truth, ordered, cps = _checkpoints(raw, stream)
    cps = cps[:: max(1, len(cps) // 40)]
    accepted_true = 0
    for cp, end, true_end in _probes(ordered, cps):
        got = _fast(cp, stream[cp.start : end[0]], end[2] - cp.out, end[1])
        if got is None:
            assert end != true_end, f"{name}: refused a true end {end}"
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


def test_a_cut_inside_the_final_block_is_refused() -> None:
    """What a fixed end marker let through (module doc): a zTOC claiming the
    next checkpoint one byte into the final block, with 5 bytes more output.
    An empty final fixed block cut in there is read as a 5-byte match and
    accepted; the random marker is not copied out, and the span is refused."""
    data, stream, cp, final = _flushed_then_finished()
    lie = zran.Checkpoint(final + 1, len(data) + 5, 0, b"")
    old = (
        libdeflate._stored_header(len(cp.window), final=False)
        + cp.window
        + stream[cp.start : lie.cin]
        + b"\x03\x00"  # the fixed marker: an empty final fixed-Huffman block
    )
    inflater = zlib.decompressobj(-15)
    made = inflater.decompress(old)
    assert inflater.eof and len(made) == zran.WINDOW + 5, "the fixed marker passed"
    assert _fast(cp, stream[cp.start : lie.cin], 5, 0) is None
    with pytest.raises(CorruptLayer):
        zran.inflate_into(cp, stream[cp.start : lie.cin], bytearray(5), end=lie)


@pytest.mark.parametrize(("name", "raw", "stream"), _streams(), ids=[s[0] for s in _streams()])
def test_random_cuts_and_sizes_are_accepted_only_at_boundaries(
    name: str, raw: bytes, stream: bytes
) -> None:
    """Cuts anywhere after a checkpoint, with output sizes near the true ones
    or anywhere (the random search that found the fixed marker's hole)."""
    rng = random.Random(name)
    truth, ordered, cps = _checkpoints(raw, stream)
    for cp in [*rng.sample(cps, 6), cps[-1]]:
        for _ in range(150):
            cin = rng.randrange(cp.cin + 1, min(len(stream), cp.cin + 60_000) + 1)
            later = [t for t in ordered if t[0] >= cin - 2 and t[2] > cp.out]
            near = (later[0][2] if later else len(raw)) - cp.out
            size = near + rng.choice([0, 0, -1, 1, -3, 5, rng.randrange(-1000, 1000)])
            bits = rng.randrange(8)
            if size <= 0:
                continue
            got = _fast(cp, stream[cp.start : cin], size, bits)
            if got is not None:
                assert (cin, bits, cp.out + size) in truth, f"{name}: accepted a non-boundary"
                assert got == raw[cp.out : cp.out + size]


def test_a_cut_inside_a_final_stored_block_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cut inside the data of the stream's own final stored block copies the
    end marker out as data, header bytes and all: refused by ``_echoes``.
    Without that check such a cut is accepted, the edit in the output."""
    data = random.Random(1).randbytes(3000)
    packer = zlib.compressobj(0, zlib.DEFLATED, -15)  # level 0: stored blocks
    stream = packer.compress(data) + packer.flush()
    assert stream[0] & 7 == 1, "one final stored block"  # BFINAL 1, BTYPE 00
    start = zran.Checkpoint(0, 0, 0, b"")
    # the marker's stored block must end where the real one does
    ends = len(stream) - libdeflate.TAIL - 6

    def accepted() -> list[tuple[int, int, int]]:
        found = []
        for cin in range(ends - 4, ends + 8):
            for bits in range(8):
                for size in range(cin - 10, cin + 10):
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


def test_zran_takes_it_for_whole_spans_with_an_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """``inflate_into`` with ``end`` and ``inflate_from`` with ``end_hint`` go
    through libdeflate (ISA-L is not asked); without an end they do not; a
    wrong hint still gives the span (another way), a wrong end is refused."""
    raw, blob, cps = _tar_with_checkpoints()
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
        out = bytearray(len(want))
        assert zran.inflate_into(cp, view, out, end=nxt) == len(out) and out == want
        assert zran.inflate_from(cp, view, 0, len(want), end_hint=nxt) == want
        span_out, made = zran.inflate_span(cp, view, len(want), end=nxt)
        assert span_out == want and made == len(want)
    assert len(answers) == 3 * (len(cps) - 1) and all(answers)
    answers.clear()
    cp, nxt = cps[1], cps[2]
    span, want = blob[cp.start : nxt.cin], raw[cp.out : nxt.out]
    assert zran.inflate_from(cp, span, 0, len(want)) == want
    assert answers == []  # no end: libdeflate could not stop in the right place
    wrong = zran.Checkpoint(nxt.cin, nxt.out, (nxt.bits + 1) % 8, nxt.window)
    assert zran.inflate_from(cp, span, 0, len(want), end_hint=wrong) == want
    assert answers == [None]
    with pytest.raises(CorruptLayer):
        zran.inflate_into(cp, span, bytearray(len(want)), end=wrong)
    assert answers == [None, None]


def test_spans_in_spacious_buffers_are_inflated_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """``zran.spacious`` + ``inflate_span(in_place=True)``: libdeflate edits the
    span where it is, the output is the span's, the input is as it was; a
    wrong end is still refused (by libz, over the restored bytes); a span
    cut out of a bigger buffer is never edited in place, whatever is asked."""
    raw, blob, cps = _tar_with_checkpoints()
    modes: list[bool] = []
    real = libdeflate.inflate

    def spy(*args: int | bytes, **kwargs: int | bool) -> int | None:
        modes.append(bool(kwargs.get("in_place")))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(libdeflate, "inflate", spy)
    for cp, nxt in zip(cps, cps[1:], strict=False):
        data = blob[cp.start : nxt.cin]
        span = zran.spacious(len(data))
        span[:] = data
        out, made = zran.inflate_span(cp, span, nxt.out - cp.out, end=nxt, in_place=True)
        assert out == raw[cp.out : nxt.out] and made == len(out)
        assert span == data
    assert modes == [True] * (len(cps) - 1)
    cp, nxt = cps[1], cps[2]
    data = blob[cp.start : nxt.cin]
    wrong = zran.Checkpoint(nxt.cin, nxt.out, (nxt.bits + 1) % 8, nxt.window)
    span = zran.spacious(len(data))
    span[:] = data
    with pytest.raises(CorruptLayer):
        zran.inflate_span(cp, span, nxt.out - cp.out, end=wrong, in_place=True)
    assert span == data
    modes.clear()
    bigger = bytearray(libdeflate.ROOM_BEFORE + len(data) + 1 + libdeflate.ROOM_AFTER)
    bigger[libdeflate.ROOM_BEFORE : libdeflate.ROOM_BEFORE + len(data)] = data
    inside = memoryview(bigger)[libdeflate.ROOM_BEFORE : libdeflate.ROOM_BEFORE + len(data)]
    out, _ = zran.inflate_span(cp, inside, nxt.out - cp.out, end=nxt, in_place=True)
    assert out == raw[cp.out : nxt.out] and modes == [False]


def test_a_span_cut_short_gives_only_the_bytes_made() -> None:
    """``inflate_span``'s buffer is not zero-filled: where the stream ends
    before ``size`` (the last member's end), it is cut to what was made."""
    raw, blob, cps = _tar_with_checkpoints()
    cp = cps[-1]
    want = raw[cp.out :]
    out, made = zran.inflate_span(cp, memoryview(blob)[cp.start :], len(want) + 4096, to_end=True)
    assert made == len(want) and out == want


def test_a_one_byte_span_from_the_stream_start() -> None:
    """No window and less output than the end marker's header: the output
    check reads only the bytes the span made."""
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = packer.compress(b"r") + packer.flush(zlib.Z_FULL_FLUSH)
    stream = first + packer.compress(b"8imfs") + packer.flush()
    assert _fast(zran.Checkpoint(0, 0, 0, b""), stream[: len(first)], 1, 0) == b"r"
