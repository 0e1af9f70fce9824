"""The pure header parsers, against the libraries that write the formats.

safetensors files come from ``safetensors.numpy.save`` and are read back
with ``safe_open``; malformed ones are built by hand, and each is checked
to be refused by ``safe_open`` too (so the parser is not stricter or looser
than the reference on these cases), with an error naming the file. GGUF
files come from ``gguf.GGUFWriter`` and are read back with ``GGUFReader``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from r8imfs.errors import BadModelHeader
from r8imfs.models import header as model
from r8imfs.models import safetensors as st
from r8imfs.models.incomplete import Incomplete

NAME = "/src/weights/x.safetensors"


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "a": rng.standard_normal((4, 3)).astype(np.float32),
        "b": np.arange(10, dtype=np.int8),
        "c": np.zeros((0, 5), dtype=np.float16),
        "d": np.ones((2, 2, 2), dtype=np.uint64),
        "e": np.array([True, False]),
    }


def test_safetensors_header_matches_safe_open(tmp_path: Path) -> None:
    data = save(_arrays(), metadata={"format": "np", "note": "ok"})
    (tmp_path / "x.safetensors").write_bytes(data)
    h = model.parse(data, len(data), NAME)
    assert h.format == "safetensors"
    with safe_open(str(tmp_path / "x.safetensors"), framework="numpy") as f:
        assert h.metadata == f.metadata()
        assert sorted(t.name for t in h.tensors) == sorted(f.keys())
        for t in h.tensors:
            piece = f.get_slice(t.name)
            assert (t.dtype, list(t.shape)) == (piece.get_dtype(), list(piece.get_shape()))
            assert data[t.offset : t.offset + t.size] == f.get_tensor(t.name).tobytes()


def test_safetensors_asks_for_exactly_the_header() -> None:
    data = save(_arrays())
    (n,) = struct.unpack("<Q", data[:8])
    with pytest.raises(Incomplete) as more:
        st.parse(data[:100], len(data), NAME)
    assert more.value.need == 8 + n
    assert st.parse(data[: 8 + n], len(data), NAME).header_size == n


def _file(header: dict[str, Any] | bytes, body: int, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    return struct.pack("<Q", n) + raw + b"\0" * body


F32_4 = {"dtype": "F32", "shape": [4]}
BAD = {
    "length past the end": (_file({}, 0, length=1000), "runs past the end of the file"),
    "invalid JSON": (_file(b'{"a": ', 0), "header is not valid JSON"),
    "not an object": (_file(b"[1, 2]", 0), "not an object"),
    "overlap": (
        _file(
            {"a": {**F32_4, "data_offsets": [0, 16]}, "b": {**F32_4, "data_offsets": [8, 24]}}, 24
        ),
        "'b' overlaps the tensor before it",
    ),
    "out of the file": (
        _file({"a": {**F32_4, "data_offsets": [0, 16]}}, 8),
        "'a' runs past the end of the file",
    ),
    "a gap": (
        _file({"a": {**F32_4, "data_offsets": [4, 20]}}, 20),
        "4 bytes before tensor 'a' belong to no tensor",
    ),
    "size against shape": (
        _file({"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}, 16),
        "should take 20 bytes",
    ),
    "bytes after the last tensor": (
        _file({"a": {**F32_4, "data_offsets": [0, 16]}}, 20),
        "tensors end at byte",
    ),
    "metadata not strings": (_file({"__metadata__": {"a": 1}}, 0), "__metadata__ must map"),
    "shorter than 8": (b"\x01\x02", "shorter than 8"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_safetensors_headers_are_refused_naming_the_file(case: str, tmp_path: Path) -> None:
    data, message = BAD[case]
    with pytest.raises(BadModelHeader) as err:
        model.parse(data, len(data), NAME)
    assert str(err.value).startswith(NAME + ": ") and message in str(err.value)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(SafetensorError):  # the reference refuses it too
        safe_open(str(path), framework="numpy")


def _write_gguf(path: Path) -> None:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("a.u32", 7)
    w.add_float32("a.f32", 0.5)
    w.add_bool("a.bool", True)
    w.add_string("a.str", "héllo")
    w.add_array("a.small", [1, 2, 3])
    w.add_array("a.big", list(range(1000)))
    w.add_tensor("t.f32", np.ones((3, 5), dtype=np.float32))
    w.add_tensor("t.f16", np.ones((64,), dtype=np.float16))
    w.add_tensor("t.i8", np.ones((7, 2), dtype=np.int8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_header_matches_gguf_reader(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    _write_gguf(path)
    data = path.read_bytes()
    h = model.parse(data, len(data), "/m.gguf")
    reader = gguf.GGUFReader(str(path))
    want = {
        t.name: (t.tensor_type.name, [int(x) for x in t.shape], int(t.data_offset), int(t.n_bytes))
        for t in reader.tensors
    }
    assert {t.name: (t.dtype, list(t.shape), t.offset, t.size) for t in h.tensors} == want
    assert h.metadata["a.u32"] == 7 and h.metadata["a.bool"] is True
    assert h.metadata["a.f32"] == 0.5 and h.metadata["a.str"] == "héllo"
    assert h.metadata["a.small"] == [1, 2, 3]
    assert h.metadata["a.big"] == {"type": "i32", "length": 1000}
    assert h.metadata["general.architecture"] == "llama"


def test_gguf_reads_in_growing_pieces_and_refuses_truncation(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    _write_gguf(path)
    data = path.read_bytes()
    have, rounds, needs = 16, 0, []
    while True:
        try:
            h = model.parse(data[:have], len(data), "/m.gguf")
            break
        except Incomplete as more:
            needs.append((have, more.need))
            have, rounds = more.need, rounds + 1
    assert all(need > had for had, need in needs)
    assert rounds >= 2 and have <= len(data) and len(h.tensors) == 3
    with pytest.raises(BadModelHeader, match="^/m.gguf: tensor .* runs past the end"):
        model.parse(data, h.tensors[-1].offset + 1, "/m.gguf")
    with pytest.raises(BadModelHeader, match="^/m.gguf: GGUF header runs past the end"):
        model.parse(data[:100], 100, "/m.gguf")
