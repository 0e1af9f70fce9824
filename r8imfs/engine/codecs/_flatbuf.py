"""Just enough FlatBuffers to write and read SOCI's zTOC, by hand.

Why not the ``flatbuffers`` package: its Python accessors trust the buffer
(a hostile offset becomes an ``IndexError`` somewhere, or a silent misread),
and the schema is five small tables. Here every read is bounds-checked and
raises ``FlatbufError``; the caller turns that into its own error.

Wire format (flatbuffers.dev, "Internals"): little-endian; the buffer starts
with a ``uoffset`` (u32) to the root table. A table starts with an ``soffset``
(i32): its vtable is at ``table - soffset``. A vtable is u16 vtable size, u16
table size, then one u16 per field id (declaration order in the schema):
the field's offset inside the table, 0 if absent (then it has its default).
References (strings, vectors, sub-tables) are u32 offsets relative to where
they are stored, always forward. A string is a u32 length, the bytes and a NUL;
a vector a u32 count and its elements (references for strings and tables).

The writer lays the buffer out front to back (a table, then what it refers to),
which keeps every reference forward without the usual back-to-front builder.
Scalars equal to their default are left out, as the Go builder does.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union


class FlatbufError(ValueError):
    """The bytes are not a well-formed FlatBuffer for the expected schema."""


# -- writing ------------------------------------------------------------------

_SCALARS = {"u8": "<B", "i8": "<b", "i32": "<i", "u32": "<I", "i64": "<q"}


@dataclass(frozen=True, slots=True)
class Scalar:
    kind: str  # one of _SCALARS
    value: int
    default: int = 0


@dataclass(frozen=True, slots=True)
class Str:
    value: bytes


@dataclass(frozen=True, slots=True)
class Bytes:
    value: bytes


@dataclass(frozen=True, slots=True)
class Table:
    fields: Sequence[Field | None]  # indexed by field id


@dataclass(frozen=True, slots=True)
class Vector:
    items: Sequence[Str | Table]


Field = Union[Scalar, Str, Bytes, Table, Vector]  # noqa: UP007 (a runtime alias)


class Writer:
    """Serialises a ``Table`` tree into one buffer."""

    def __init__(self) -> None:
        self.buf = bytearray(4)

    def finish(self, root: Table) -> bytes:
        pos = self._table(root)
        struct.pack_into("<I", self.buf, 0, pos)
        self._align(8)
        return bytes(self.buf)

    def _align(self, n: int) -> None:
        self.buf += bytes(-len(self.buf) % n)

    def _table(self, table: Table) -> int:
        present = [(i, f) for i, f in enumerate(table.fields) if _present(f)]
        layout, size = _layout(present)
        nfields = present[-1][0] + 1 if present else 0
        self._align(2)
        vt = len(self.buf)
        slots = [0] * nfields
        for i, _ in present:
            slots[i] = layout[i]
        self.buf += struct.pack(f"<HH{nfields}H", 4 + 2 * nfields, size, *slots)
        self._align(8)
        start = len(self.buf)
        self.buf += bytes(size)
        struct.pack_into("<i", self.buf, start, start - vt)
        for i, f in present:
            at = start + layout[i]
            if isinstance(f, Scalar):
                struct.pack_into(_SCALARS[f.kind], self.buf, at, f.value)
            else:
                assert f is not None
                self._patch(at, self._child(f))
        return start

    def _patch(self, at: int, target: int) -> None:
        struct.pack_into("<I", self.buf, at, target - at)

    def _child(self, f: Field) -> int:
        if isinstance(f, Table):
            return self._table(f)
        self._align(4)
        pos = len(self.buf)
        if isinstance(f, Str):
            self.buf += struct.pack("<I", len(f.value)) + f.value + b"\0"
        elif isinstance(f, Bytes):
            self.buf += struct.pack("<I", len(f.value)) + f.value
        elif isinstance(f, Vector):
            self.buf += struct.pack("<I", len(f.items)) + bytes(4 * len(f.items))
            for k, item in enumerate(f.items):
                self._patch(pos + 4 + 4 * k, self._child(item))
        return pos


def _present(f: Field | None) -> bool:
    return f is not None and not (isinstance(f, Scalar) and f.value == f.default)


def _layout(present: list[tuple[int, Field | None]]) -> tuple[dict[int, int], int]:
    """Offsets inside the table: the soffset, then 8-, 4- and 1-byte fields, aligned."""
    layout: dict[int, int] = {}
    at = 4
    for width in (8, 4, 1):
        for i, f in present:
            if _width(f) == width:
                at += -at % width
                layout[i] = at
                at += width
    return layout, at + (-at % 4)


def _width(f: Field | None) -> int:
    if isinstance(f, Scalar):
        return struct.calcsize(_SCALARS[f.kind])
    return 4  # a reference


# -- reading ------------------------------------------------------------------


_STRUCTS: dict[str, struct.Struct] = {}


class Reader:
    """Bounds-checked access to a FlatBuffer; positions are absolute.

    A vtable is checked once and its field offsets kept (FlatBuffers writers
    share one vtable among tables of the same shape, so a zTOC of 100,000
    entries has a handful): decoding a big TOC costs one dict lookup per
    field, not a vtable parse.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        #: vtable position -> (table size, field offsets)
        self._vtables: dict[int, tuple[int, tuple[int, ...]]] = {}

    def _unpack(self, fmt: str, pos: int) -> int:
        s = _STRUCTS.get(fmt) or _STRUCTS.setdefault(fmt, struct.Struct(fmt))
        if pos < 0 or pos + s.size > self.size:
            raise FlatbufError(f"read of {s.size} bytes at {pos} is outside the buffer")
        value: int = s.unpack_from(self.data, pos)[0]
        return value

    def root(self) -> int:
        return self._deref(0)

    def _deref(self, at: int) -> int:
        target = at + self._unpack("<I", at)
        if target >= self.size:
            raise FlatbufError(f"reference at {at} points outside the buffer")
        return target

    def _vtable(self, vt: int) -> tuple[int, tuple[int, ...]]:
        known = self._vtables.get(vt)
        if known is not None:
            return known
        vt_size = self._unpack("<H", vt)
        t_size = self._unpack("<H", vt + 2)
        if vt_size < 4 or vt_size % 2 or vt + vt_size > self.size or t_size < 4:
            raise FlatbufError(f"malformed vtable at {vt}")
        offsets = struct.unpack_from(f"<{(vt_size - 4) // 2}H", self.data, vt + 4)
        self._vtables[vt] = (t_size, offsets)
        return t_size, offsets

    def field(self, table: int, fid: int) -> int | None:
        """Absolute position of field ``fid`` of the table at ``table``, or None."""
        t_size, offsets = self._vtable(table - self._unpack("<i", table))
        if table + t_size > self.size:
            raise FlatbufError(f"table at {table} runs past the buffer")
        if fid >= len(offsets):
            return None
        off = offsets[fid]
        if off == 0:
            return None
        if off < 4 or off >= t_size:
            raise FlatbufError(f"field {fid} of the table at {table} is outside it")
        return table + off

    def scalar(self, table: int, fid: int, kind: str, default: int = 0) -> int:
        at = self.field(table, fid)
        return default if at is None else self._unpack(_SCALARS[kind], at)

    def ref(self, table: int, fid: int) -> int | None:
        at = self.field(table, fid)
        return None if at is None else self._deref(at)

    def string_at(self, pos: int) -> bytes:
        n = self._unpack("<I", pos)
        if pos + 4 + n > self.size:
            raise FlatbufError(f"string at {pos} runs past the buffer")
        return bytes(self.data[pos + 4 : pos + 4 + n])

    def string(self, table: int, fid: int) -> bytes:
        pos = self.ref(table, fid)
        return b"" if pos is None else self.string_at(pos)

    def vector(self, table: int, fid: int, width: int) -> tuple[int, int]:
        """(position of the first element, count); (0, 0) when absent."""
        pos = self.ref(table, fid)
        if pos is None:
            return 0, 0
        n = self._unpack("<I", pos)
        if pos + 4 + n * width > self.size:
            raise FlatbufError(f"vector of {n} at {pos} runs past the buffer")
        return pos + 4, n

    def bytes_vector(self, table: int, fid: int) -> bytes:
        start, n = self.vector(table, fid, 1)
        return bytes(self.data[start : start + n])

    def element(self, start: int, k: int) -> int:
        """The target of reference ``k`` of a vector of strings or tables."""
        return self._deref(start + 4 * k)
