"""Streaming decompression of whole layers, by compression name.

For one sequential pass (``extract``, recompression, one-pass indexing):
gzip may have several members (pigz, some producers concatenate); zstd may
have several frames and skippable frames (the seekable format's seek table).
"""

from __future__ import annotations

import gzip
import zlib
from typing import IO

import zstandard

from r8imfs.errors import CorruptLayer, UnsupportedMediaType
from r8imfs.oci.mediatypes import layer_compression


def compression_of(media_type: str) -> str:
    found = layer_compression(media_type)
    if found is None:
        raise UnsupportedMediaType(
            f"unsupported layer media type {media_type!r}",
            hint="r8imfs reads tar layers: plain, gzip or zstd",
        )
    return found


def open_decompressed(raw: IO[bytes], compression: str) -> IO[bytes]:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if compression == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return reader  # type: ignore[return-value]
    return raw


#: what a broken compressed stream raises while being read
DECOMPRESSION_ERRORS: tuple[type[BaseException], ...] = (
    zlib.error,
    gzip.BadGzipFile,
    EOFError,
    zstandard.ZstdError,
)


def corrupt(what: str, exc: BaseException) -> CorruptLayer:
    return CorruptLayer(f"{what} does not decompress: {exc}")
