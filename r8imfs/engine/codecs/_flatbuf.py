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
which keeps every reference forward without the usual back-to-front builder
(a shared vtable sits before the first table using it: the table's soffset is
positive either way).
Scalars equal to their default are left out, as the Go builder does.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
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
    """Serialises a ``Table`` tree into one buffer.

    Tables of the same shape share one vtable, as Go's builder writes them
    (``share_vtables=False``: one per table, for tests of readers).
    """

    def __init__(self, *, share_vtables: bool = True) -> None:
        self.buf = bytearray(4)
        self._vtables: dict[bytes, int] | None = {} if share_vtables else None

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
        slots = [0] * nfields
        for i, _ in present:
            slots[i] = layout[i]
        vtable = struct.pack(f"<HH{nfields}H", 4 + 2 * nfields, size, *slots)
        vt = self._vtables.get(vtable) if self._vtables is not None else None
        if vt is None:
            self._align(2)
            vt = len(self.buf)
            self.buf += vtable
            if self._vtables is not None:
                self._vtables[vtable] = vt
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

    ``field``, ``scalar``, ``ref``, ``string``: one field at a time (a vtable
    is checked once per position and kept). ``fields``: a whole table at once,
    for the big vectors of tables (a zTOC's entries).
    """

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data if type(data) is bytes else bytes(data)  # slices are bytes
        self.size = len(data)
        #: vtable position -> (table size, field offsets)
        self._vtables: dict[int, tuple[int, tuple[int, ...]]] = {}
        #: (vtable bytes, field kinds) -> how ``fields`` reads such tables
        self._plans: dict[tuple[bytes, str], _Plan] = {}

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
        if pos < 0 or pos + 4 > self.size:
            raise FlatbufError(f"string at {pos} is outside the buffer")
        end = pos + 4 + _U32.unpack_from(self.data, pos)[0]
        if end > self.size:
            raise FlatbufError(f"string at {pos} runs past the buffer")
        return self.data[pos + 4 : end]

    def texts(self, positions: Sequence[int | None]) -> list[str]:
        """The strings at ``positions`` (None: absent, "") as text; bytes that are not
        UTF-8 kept as surrogates, as Go's strings keep them."""
        data, size, out = self.data, self.size, []
        for pos in positions:  # string_at, inline: a big TOC has a million strings
            if pos is None:
                out.append("")
                continue
            if pos < 0 or pos + 4 > size:
                raise FlatbufError(f"string at {pos} is outside the buffer")
            end = pos + 4 + _U32.unpack_from(data, pos)[0]
            if end > size:
                raise FlatbufError(f"string at {pos} runs past the buffer")
            out.append(data[pos + 4 : end].decode("utf-8", "surrogateescape"))
        return out

    def string(self, table: int, fid: int) -> bytes:
        pos = self.ref(table, fid)
        return b"" if pos is None else self.string_at(pos)

    def vector(self, table: int, fid: int, width: int) -> tuple[int, int]:
        """(position of the first element, count); (0, 0) when absent."""
        pos = self.ref(table, fid)
        return (0, 0) if pos is None else self.vector_at(pos, width)

    def vector_at(self, pos: int, width: int) -> tuple[int, int]:
        """(position of the first element, count) of the vector at ``pos``."""
        n = self._unpack("<I", pos)
        if pos + 4 + n * width > self.size:
            raise FlatbufError(f"vector of {n} at {pos} runs past the buffer")
        return pos + 4, n

    def bytes_vector(self, table: int, fid: int) -> bytes:
        start, n = self.vector(table, fid, 1)
        return bytes(self.data[start : start + n])

    def bytes_view(self, table: int, fid: int) -> memoryview:
        """``bytes_vector`` without the copy: a view into the buffer (of
        immutable bytes), for a big vector read once (a zTOC's 8 MiB of windows)."""
        start, n = self.vector(table, fid, 1)
        return memoryview(self.data)[start : start + n].toreadonly()

    def element(self, start: int, k: int) -> int:
        """The target of reference ``k`` of a vector of strings or tables."""
        return self._deref(start + 4 * k)

    def elements(self, start: int, n: int) -> list[int]:
        """The targets of the ``n`` references of a vector (as ``vector`` gave it)."""
        if start < 0 or start + 4 * n > self.size:
            raise FlatbufError(f"vector of {n} at {start} runs past the buffer")
        rels = struct.unpack_from(f"<{n}I", self.data, start)
        targets = [start + 4 * k + rel for k, rel in enumerate(rels)]
        if targets and max(targets) >= self.size:
            k = next(k for k, t in enumerate(targets) if t >= self.size)
            raise FlatbufError(f"reference at {start + 4 * k} points outside the buffer")
        return targets

    def fields(self, table: int, kinds: str) -> list[int | None]:
        """Every field of a table in one read: ``kinds[i]`` is field ``i``'s struct
        code (``"q"``, ``"I"``, ``"b"``...) or ``"r"`` for a reference. A scalar
        comes back as its value, a reference as its target (as ``ref``), an
        absent field as None; the checks are those of ``field`` and ``ref``.

        The layout (``_Plan``) is worked out once per distinct vtable *content*,
        so the thousands of entry tables of a big TOC cost one struct unpack
        each, whether their writer shared one vtable among them (Go's builder
        does) or wrote one per table (``Writer`` does).
        """
        data, size = self.data, self.size
        if table < 0 or table + 4 > size:
            raise FlatbufError(f"table at {table} is outside the buffer")
        vt = table - _I32.unpack_from(data, table)[0]
        if vt < 0 or vt + 2 > size:
            raise FlatbufError(f"vtable of the table at {table} is outside the buffer")
        vt_end = vt + _U16.unpack_from(data, vt)[0]
        if vt_end > size:
            raise FlatbufError(f"malformed vtable at {vt}")
        key = (data[vt:vt_end], kinds)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _plan(key[0], kinds, vt)
        if table + plan.t_size > size:
            raise FlatbufError(f"table at {table} runs past the buffer")
        if plan.unpack is None:  # fields that overlap: no single layout; one by one
            return [self._one(table, fid, kind) for fid, kind in enumerate(kinds)]
        if table + plan.span > size:
            raise FlatbufError(f"fields of the table at {table} run past the buffer")
        values = plan.unpack(data, table)
        out: list[int | None] = [None] * len(kinds)
        for fid, value in zip(plan.order, values, strict=True):
            out[fid] = value
        for k, fid, off in plan.refs:
            target = table + off + values[k]
            if target >= size:
                raise FlatbufError(f"reference at {table + off} points outside the buffer")
            out[fid] = target
        return out

    def _one(self, table: int, fid: int, kind: str) -> int | None:
        at = self.field(table, fid)
        if at is None:
            return None
        return self._deref(at) if kind == "r" else self._unpack("<" + kind, at)


_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")


def _plan(vtable: bytes, kinds: str, vt: int) -> _Plan:
    """How ``Reader.fields`` reads the tables with this vtable (found at ``vt``)."""
    if len(vtable) < 4 or len(vtable) % 2:
        raise FlatbufError(f"malformed vtable at {vt}")
    _, t_size, *offsets = struct.unpack(f"<{len(vtable) // 2}H", vtable)
    if t_size < 4:
        raise FlatbufError(f"malformed vtable at {vt}")
    present = sorted((offsets[fid], fid) for fid in range(min(len(kinds), len(offsets))))
    fmt, at = "<", 0
    order: list[int] = []
    refs: list[tuple[int, int, int]] = []
    for off, fid in present:
        if off == 0:
            continue
        if off < 4 or off >= t_size:
            raise FlatbufError(f"field {fid} of a table with the vtable at {vt} is outside it")
        if off < at:
            return _Plan(t_size, None, 0, (), ())
        code = "I" if kinds[fid] == "r" else kinds[fid]
        fmt += f"{off - at}x{code}" if off > at else code
        at = off + struct.calcsize("<" + code)
        if kinds[fid] == "r":
            refs.append((len(order), fid, off))
        order.append(fid)
    return _Plan(t_size, struct.Struct(fmt).unpack_from, at, tuple(order), tuple(refs))


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to read the fields of tables sharing one vtable: one unpack at the table
    (None if fields overlap), how many bytes it reads, which field each value is,
    and the (value index, field, offset in the table) of the references."""

    t_size: int
    unpack: Callable[[bytes, int], tuple[int, ...]] | None
    span: int
    order: tuple[int, ...]
    refs: tuple[tuple[int, int, int], ...]
