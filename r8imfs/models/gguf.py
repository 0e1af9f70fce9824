"""The GGUF header (versions 2 and 3, little-endian): metadata and tensor infos.

Layout (ggml's ``docs/gguf.md``): ``"GGUF"``, a u32 version, u64 tensor and
key-value counts; the key-values (a u64-length string key, a u32 type, the
value; arrays carry an element type and a u64 count); then per tensor its
name, u32 dimension count, u64 dimensions, u32 ggml type and u64 offset
relative to the data section, which starts at the end of the infos rounded
up to ``general.alignment`` (default 32).

Read as a cursor over the bytes given; running off their end raises
``Incomplete`` with a lower bound for what to read next. Big arrays (a
tokenizer's vocabulary) are summarised in ``metadata`` as
``{"type", "length"}`` rather than kept.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

from r8imfs.errors import BadModelHeader
from r8imfs.models.incomplete import Incomplete

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
#: arrays longer than this are summarised, not listed
SHOWN_ARRAY = 16
#: sanity bounds: a count past these is a corrupt header, not a model
MAX_COUNT = 1 << 24
MAX_DIMS = 8
#: value type → (name, struct format); 8 string and 9 array are handled apart
_SCALARS = {
    0: ("u8", "<B"),
    1: ("i8", "<b"),
    2: ("u16", "<H"),
    3: ("i16", "<h"),
    4: ("u32", "<I"),
    5: ("i32", "<i"),
    6: ("f32", "<f"),
    7: ("bool", "<?"),
    10: ("u64", "<Q"),
    11: ("i64", "<q"),
    12: ("f64", "<d"),
}
STRING, ARRAY = 8, 9
#: ggml type → (name, elements per block, bytes per block), after ggml's table
GGML_TYPES = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}


@dataclass(frozen=True, slots=True)
class Tensor:
    """One tensor; ``offset`` absolute in the file, ``size`` in bytes (-1: unknown type)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    metadata: dict[str, Any]
    tensors: tuple[Tensor, ...]
    data_start: int


def is_gguf(prefix: bytes) -> bool:
    return prefix[:4] == MAGIC


class _Cursor:
    def __init__(self, data: bytes, file_size: int, name: str) -> None:
        self.data = data
        self.file_size = file_size
        self.pos = 0
        self.name = name

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > self.file_size:
            raise BadModelHeader(f"{self.name}: GGUF header runs past the end of the file")
        if end > len(self.data):
            # at least double: a header is many small records, one round trip each otherwise
            raise Incomplete(min(max(end, 2 * len(self.data)), self.file_size))
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self, what: str, limit: int = MAX_COUNT) -> int:
        n = int(self.unpack("<Q"))
        if n > limit:
            raise BadModelHeader(f"{self.name}: GGUF {what} count {n} is not plausible")
        return n

    def string(self) -> str:
        raw = self.take(self.count("string length", 1 << 30))
        return raw.decode("utf-8", errors="replace")


def parse(data: bytes, file_size: int, name: str) -> Header:
    """The header of a GGUF file of ``file_size`` bytes starting with ``data``."""
    c = _Cursor(data, file_size, name)
    if c.take(4) != MAGIC:
        raise BadModelHeader(f"{name}: not a GGUF file (no GGUF magic)")
    version = int(c.unpack("<I"))
    if version not in (2, 3):
        raise BadModelHeader(f"{name}: GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = c.count("tensor"), c.count("key-value")
    metadata = {}
    for _ in range(n_kv):
        key = c.string()
        metadata[key] = _value(c, int(c.unpack("<I")))
    infos = [_tensor_info(c) for _ in range(n_tensors)]
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0:
        raise BadModelHeader(f"{name}: general.alignment {alignment!r} is not a positive integer")
    data_start = -(-c.pos // alignment) * alignment
    tensors = tuple(_place(info, data_start, alignment, name) for info in infos)
    _check_bounds(tensors, data_start, file_size, name)
    return Header(version, metadata, tensors, data_start)


def _value(c: _Cursor, vtype: int) -> Any:
    if vtype == STRING:
        return c.string()
    if vtype == ARRAY:
        etype = int(c.unpack("<I"))
        n = c.count("array length", 1 << 32)
        items = [_value(c, etype) for _ in range(n)]
        if n > SHOWN_ARRAY:
            return {"type": _type_name(etype), "length": n}
        return items
    scalar = _SCALARS.get(vtype)
    if scalar is None:
        raise BadModelHeader(f"{c.name}: GGUF value type {vtype} is unknown")
    return c.unpack(scalar[1])


def _type_name(vtype: int) -> str:
    if vtype == STRING:
        return "string"
    if vtype == ARRAY:
        return "array"
    return _SCALARS.get(vtype, (f"type {vtype}", ""))[0]


_Info = tuple[str, tuple[int, ...], int, int]


def _tensor_info(c: _Cursor) -> _Info:
    name = c.string()
    n_dims = int(c.unpack("<I"))
    if n_dims > MAX_DIMS:
        raise BadModelHeader(f"{c.name}: tensor {name!r} has {n_dims} dimensions")
    dims = tuple(int(c.unpack("<Q")) for _ in range(n_dims))
    return name, dims, int(c.unpack("<I")), int(c.unpack("<Q"))


def _place(info: _Info, data_start: int, alignment: int, name: str) -> Tensor:
    tname, dims, ggml_type, offset = info
    if offset % alignment:
        raise BadModelHeader(f"{name}: tensor {tname!r} offset {offset} is not aligned")
    known = GGML_TYPES.get(ggml_type)
    if known is None:
        return Tensor(tname, f"ggml type {ggml_type}", dims, data_start + offset, -1)
    type_name, block, block_bytes = known
    elements = math.prod(dims)
    if elements % block:
        raise BadModelHeader(
            f"{name}: tensor {tname!r} has {elements} elements, not whole {type_name} blocks"
        )
    return Tensor(tname, type_name, dims, data_start + offset, elements // block * block_bytes)


def _check_bounds(tensors: tuple[Tensor, ...], start: int, file_size: int, name: str) -> None:
    if start > file_size:
        raise BadModelHeader(f"{name}: GGUF header runs past the end of the file")
    end = start
    for t in sorted(tensors, key=lambda t: t.offset):
        if t.offset < end:
            raise BadModelHeader(f"{name}: tensor {t.name!r} overlaps the tensor before it")
        end = t.offset + max(t.size, 0)
        if end > file_size:
            raise BadModelHeader(
                f"{name}: tensor {t.name!r} runs past the end of the file ({file_size} bytes)"
            )
