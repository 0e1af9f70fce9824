"""One shape for the header of any model file r8imfs knows, picked by name and magic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from r8imfs.models import gguf, safetensors

SUFFIXES = (".safetensors", ".gguf")


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute, in the file
    size: int  # bytes; -1 when the dtype is unknown to r8imfs


@dataclass(frozen=True, slots=True)
class ModelHeader:
    path: str
    format: str  # "safetensors" or "gguf"
    size: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "size": self.size,
            "metadata": self.metadata,
            "tensors": [
                {
                    "name": t.name,
                    "dtype": t.dtype,
                    "shape": list(t.shape),
                    "offset": t.offset,
                    "size": t.size,
                }
                for t in self.tensors
            ],
        }


def is_model_file(path: str) -> bool:
    return path.lower().endswith(SUFFIXES)


def parse(data: bytes, file_size: int, path: str) -> ModelHeader:
    """The header of ``path`` from its first bytes; raises ``Incomplete`` for more.

    GGUF is recognised by its magic, anything else is read as safetensors
    (whose first bytes are a length, with no magic of their own).
    """
    if gguf.is_gguf(data):
        g = gguf.parse(data, file_size, path)
        tensors = tuple(TensorInfo(t.name, t.dtype, t.shape, t.offset, t.size) for t in g.tensors)
        meta: dict[str, Any] = {"gguf.version": g.version, **g.metadata}
        return ModelHeader(path, "gguf", file_size, meta, tensors)
    s = safetensors.parse(data, file_size, path)
    tensors = tuple(TensorInfo(t.name, t.dtype, t.shape, t.offset, t.size) for t in s.tensors)
    return ModelHeader(path, "safetensors", file_size, dict(s.metadata), tensors)
