"""ISA-L's fast path for resuming gzip spans, against libz/zlib-ng on the same spans.

``make setup`` installs libisal2, so the fast path is expected here; zran's
own tests (test_zran.py) run through it too. Each test below makes sure
which path answered.
"""

from __future__ import annotations

import ctypes
import gzip
import random

import pytest

from r8imfs.engine.codecs import isal, zran
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


def _fast(cp: zran.Checkpoint, data: bytes, size: int) -> bytes | None:
    src = ctypes.create_string_buffer(data, len(data))
    out = ctypes.create_string_buffer(size)
    skip = 1 if cp.bits else 0
    got = isal.inflate(
        cp.bits,
        data[0],
        cp.window,
        ctypes.addressof(src) + skip,
        len(data) - skip,
        ctypes.addressof(out),
        size,
    )
    return out.raw if got == size else None


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
    calls = []
    real = isal.inflate

    def spy(*args: int | bytes) -> int | None:
        got = real(*args)  # type: ignore[arg-type]
        calls.append(got)
        return got

    monkeypatch.setattr(isal, "inflate", spy)
    spans = _spans(blob, len(raw), 128 * 1024)
    via_isal = [zran.inflate_from(cp, memoryview(d), 0, n) for cp, d, n in spans]
    assert calls and all(calls)
    monkeypatch.setattr(isal, "available", False)
    calls.clear()
    via_libz = [zran.inflate_from(cp, memoryview(d), 0, n) for cp, d, n in spans]
    assert not calls
    assert via_isal == via_libz == [raw[cp.out : cp.out + n] for cp, _, n in spans]
