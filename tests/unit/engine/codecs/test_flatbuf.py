"""``Reader.fields`` (a whole table per unpack) against the field-at-a-time reads.

The field-at-a-time path (``field``, ``scalar``, ``ref``) is the reference:
on every buffer, good or damaged, ``fields`` must give the same values or
raise ``FlatbufError`` where it does.
"""

from __future__ import annotations

import random
import struct

import pytest

from r8imfs.engine.codecs import _flatbuf as fb

#: struct code -> the name ``Reader.scalar`` and ``Scalar`` use
NAMES = {"b": "i8", "B": "u8", "i": "i32", "I": "u32", "q": "i64"}
KINDS = "rqIrbrqr"  # a reference, then scalars and references mixed


def _table(k: int) -> fb.Table:
    """Tables of a few shapes (absent fields, defaults left out, sub-tables)."""
    fields: list[fb.Field | None] = [
        fb.Str(f"name-{k}".encode()),
        fb.Scalar("i64", k * 1_000_003 - 7),
        fb.Scalar("u32", k % 3),  # 0 is the default: left out
        None if k % 2 else fb.Str(b""),
        fb.Scalar("i8", -(k % 5)),
        fb.Table([fb.Str(b"key"), fb.Str(f"v{k}".encode())]) if k % 4 == 0 else None,
        fb.Scalar("i64", 1 << 40),
        fb.Vector([fb.Str(b"a"), fb.Str(b"bc")][: k % 3]),
    ]
    return fb.Table(fields[: 3 + k % 6])


def _buffer(share: bool, n: int = 12) -> bytes:
    root = fb.Table([fb.Vector([_table(k) for k in range(n)])])
    return fb.Writer(share_vtables=share).finish(root)


def _slow(r: fb.Reader, t: int, kinds: str) -> list[int | None]:
    out: list[int | None] = []
    for fid, kind in enumerate(kinds):
        if kind == "r":
            out.append(r.ref(t, fid))
        else:
            out.append(None if r.field(t, fid) is None else r.scalar(t, fid, NAMES[kind]))
    return out


def _tables(r: fb.Reader) -> list[int]:
    start, n = r.vector(r.root(), 0, 4)
    return r.elements(start, n)


def _outcome(fn: object, *args: object) -> object:
    try:
        return fn(*args)  # type: ignore[operator]
    except fb.FlatbufError:
        return "FlatbufError"


@pytest.mark.parametrize("share", [True, False])
def test_fields_match_the_field_at_a_time_reads(share: bool) -> None:
    r = fb.Reader(_buffer(share))
    tables = _tables(r)
    assert [r.element(r.vector(r.root(), 0, 4)[0], k) for k in range(12)] == tables
    for t in tables:
        assert r.fields(t, KINDS) == _slow(r, t, KINDS)
    name = r.fields(tables[5], KINDS)[0]
    assert name is not None and r.texts([name, None]) == ["name-5", ""]


def test_shared_vtables_make_a_smaller_buffer() -> None:
    shared, apart = _buffer(True, 40), _buffer(False, 40)
    assert len(shared) < len(apart)
    a, b = fb.Reader(shared), fb.Reader(apart)
    assert [a.texts([a.fields(t, "r")[0]]) for t in _tables(a)] == [
        b.texts([b.fields(t, "r")[0]]) for t in _tables(b)
    ]


@pytest.mark.parametrize("share", [True, False])
def test_damaged_buffers_agree_with_the_reference(share: bool) -> None:
    """Random byte changes: both paths read the same values or both refuse."""
    good = _buffer(share)
    rng = random.Random(14)
    for _ in range(400):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        r = fb.Reader(bytes(data))
        tables = _outcome(_tables, r)
        if not isinstance(tables, list):
            continue
        for t in tables:
            assert _outcome(r.fields, t, KINDS) == _outcome(_slow, r, t, KINDS)


def test_truncated_buffers_are_refused() -> None:
    good = _buffer(True)
    r = fb.Reader(good)
    last = _tables(r)[-1]
    for cut in range(last, len(good), 3):
        short = fb.Reader(good[:cut])
        assert _outcome(short.fields, last, KINDS) == _outcome(_slow, short, last, KINDS)


def _hand_table(offsets: list[int], t_size: int, body: bytes) -> tuple[bytes, int]:
    """A buffer of one vtable then one table (``body`` after its soffset)."""
    vtable = struct.pack(f"<HH{len(offsets)}H", 4 + 2 * len(offsets), t_size, *offsets)
    table = 4 + len(vtable)
    table += -table % 4
    data = bytearray(struct.pack("<I", table) + vtable)
    data += bytes(table - len(data))
    data += struct.pack("<i", table - 4) + body
    return bytes(data), table


def test_overlapping_fields_are_read_one_by_one() -> None:
    """Two fields on the same bytes: no single layout, the same answers."""
    data, t = _hand_table([4, 4, 6], 12, struct.pack("<IHH", 0x01020304, 9, 0))
    r = fb.Reader(data)
    assert r.fields(t, "IIi") == _slow(r, t, "IIi") == [0x01020304, 0x01020304, 0x90102]


@pytest.mark.parametrize(
    ("offsets", "t_size", "match"),
    [
        ([2], 8, "outside it"),  # on the soffset
        ([8], 8, "outside it"),  # past the table's size
        ([4], 2, "malformed vtable"),  # a table smaller than its soffset
    ],
)
def test_fields_outside_the_table_are_refused(offsets: list[int], t_size: int, match: str) -> None:
    data, t = _hand_table(offsets, t_size, bytes(8))
    with pytest.raises(fb.FlatbufError, match=match):
        fb.Reader(data).fields(t, "I")


def test_elements_refuse_references_past_the_end() -> None:
    data = struct.pack("<III", 0, 4, 0xFFFF)
    with pytest.raises(fb.FlatbufError, match="outside the buffer"):
        fb.Reader(data).elements(4, 2)
    with pytest.raises(fb.FlatbufError, match="runs past"):
        fb.Reader(data).elements(4, 3)
