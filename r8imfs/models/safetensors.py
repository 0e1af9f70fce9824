"""The safetensors header: an 8-byte length, then JSON, then the tensor bytes.

Layout (huggingface/safetensors, "Format"): ``N`` as a little-endian u64;
``N`` bytes of UTF-8 JSON, an object mapping each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` plus an optional
``"__metadata__"`` object of string to string; then the byte buffer the
offsets index (offsets are relative to its start, ``8 + N``).

The checks are the library's own (its ``validate``): a header within the
file and at most ``MAX_HEADER`` bytes, a JSON object, offsets that tile the
buffer with neither gaps nor overlaps and end exactly at the end of the
file, and a byte span of ``elements x dtype size`` per tensor. Any failure
is a ``BadModelHeader`` naming the file, never a traceback.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, TypeGuard

from r8imfs.errors import BadModelHeader
from r8imfs.models.incomplete import Incomplete

PREFIX = 8
#: the library refuses headers larger than this (100 MB)
MAX_HEADER = 100_000_000
METADATA = "__metadata__"
#: bits per element of each dtype the format defines (sub-byte ones included)
DTYPE_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}


@dataclass(frozen=True, slots=True)
class Tensor:
    """One tensor; ``offset`` is absolute in the file, ``size`` in bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Header:
    header_size: int  # N, the JSON's length
    metadata: dict[str, str]
    tensors: tuple[Tensor, ...]  # in file order

    @property
    def data_start(self) -> int:
        return PREFIX + self.header_size


def header_length(prefix: bytes, file_size: int, name: str) -> int:
    """``N`` from the first 8 bytes, checked against the file's size."""
    if file_size < PREFIX or len(prefix) < PREFIX:
        raise BadModelHeader(f"{name}: not a safetensors file ({file_size} bytes, shorter than 8)")
    (n,) = struct.unpack("<Q", prefix[:PREFIX])
    if n > MAX_HEADER:
        raise BadModelHeader(f"{name}: header length {n} exceeds the format's limit of 100 MB")
    if PREFIX + n > file_size:
        raise BadModelHeader(
            f"{name}: header length {n} runs past the end of the file ({file_size} bytes)"
        )
    return int(n)


def parse(data: bytes, file_size: int, name: str) -> Header:
    """The header of a file of ``file_size`` bytes whose first bytes are ``data``.

    Raises ``Incomplete`` when ``data`` does not reach the end of the JSON.
    """
    n = header_length(data, file_size, name)
    if len(data) < PREFIX + n:
        raise Incomplete(PREFIX + n)
    raw = _load_json(data[PREFIX : PREFIX + n], name)
    metadata = _metadata(raw.pop(METADATA, None), name)
    tensors = sorted(
        (_tensor(key, value, PREFIX + n, name) for key, value in raw.items()),
        key=lambda t: (t.offset, t.offset + t.size),
    )
    _check_tiling(tensors, PREFIX + n, file_size, name)
    return Header(n, metadata, tuple(tensors))


def _load_json(text: bytes, name: str) -> dict[str, Any]:
    try:
        raw = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadModelHeader(f"{name}: header is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise BadModelHeader(f"{name}: header is JSON but not an object")
    return raw


def _metadata(value: object, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise BadModelHeader(f"{name}: __metadata__ must map strings to strings")
    return dict(value)


def _tensor(key: str, value: object, base: int, name: str) -> Tensor:
    if not isinstance(value, dict):
        raise BadModelHeader(f"{name}: tensor {key!r} is not an object")
    dtype, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if not isinstance(dtype, str):
        raise BadModelHeader(f"{name}: tensor {key!r} has no dtype")
    if not _ints(shape) or not _ints(offsets) or len(offsets) != 2:
        raise BadModelHeader(f"{name}: tensor {key!r} needs a shape and two data_offsets")
    begin, end = offsets
    if end < begin:
        raise BadModelHeader(f"{name}: tensor {key!r} ends before it begins ({begin}, {end})")
    bits = DTYPE_BITS.get(dtype)
    if bits is not None:
        expected = (math.prod(shape) * bits + 7) // 8
        if expected != end - begin:
            raise BadModelHeader(
                f"{name}: tensor {key!r} ({dtype} {list(shape)}) should take {expected} "
                f"bytes, its offsets span {end - begin}"
            )
    return Tensor(key, dtype, tuple(shape), base + begin, end - begin)


def _ints(value: object) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in value
    )


def _check_tiling(tensors: list[Tensor], start: int, file_size: int, name: str) -> None:
    """Tensors tile ``[start, file_size)`` exactly, as the library requires."""
    at = start
    for t in tensors:
        if t.offset < at:
            raise BadModelHeader(f"{name}: tensor {t.name!r} overlaps the tensor before it")
        if t.offset > at:
            raise BadModelHeader(
                f"{name}: {t.offset - at} bytes before tensor {t.name!r} belong to no tensor"
            )
        at = t.offset + t.size
        if at > file_size:
            raise BadModelHeader(
                f"{name}: tensor {t.name!r} runs past the end of the file ({file_size} bytes)"
            )
    if at != file_size:
        raise BadModelHeader(f"{name}: tensors end at byte {at} but the file has {file_size} bytes")
