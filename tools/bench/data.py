"""Synthetic content: source-like text, binaries and float16-like weights.

``float16_weights`` stands in for real model weights: each 2-byte value has
a uniformly random low byte (mantissa bits) and a high byte (sign, exponent
and the top mantissa bits) drawn from the distribution of float16 values of
N(0, 0.02), the usual scale of trained weights. Like real fp16/bf16
checkpoints, gzip and zstd shrink it by only about 8%, and, what matters for
speed, deflate codes it with Huffman blocks rather than stored blocks, so it
inflates at zlib's real-data speed instead of at memcpy speed.
"""

from __future__ import annotations

import io
import os
import random
import struct
import tarfile
from pathlib import Path

from tools.bench.common import MiB

WORDS = [
    "the",
    "of",
    "and",
    "layer",
    "image",
    "registry",
    "blob",
    "digest",
    "manifest",
    "index",
    "tar",
    "gzip",
    "zstd",
    "python",
    "import",
    "def",
    "return",
    "class",
    "self",
    "none",
    "true",
    "false",
    "lib",
    "usr",
    "bin",
    "share",
    "config",
    "json",
    "model",
    "weights",
]


def make_pool(size: int, rng: random.Random) -> bytes:
    """About 2.2:1 under gzip -6: half word soup, a quarter random, a quarter hex."""
    parts: list[bytes] = []
    total = 0
    while total < size:
        kind = rng.random()
        if kind < 0.5:
            chunk = " ".join(rng.choices(WORDS, k=8192)).encode()
        elif kind < 0.75:
            chunk = rng.randbytes(32768)
        else:
            chunk = rng.randbytes(16384).hex().encode()
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)[:size]


def _high_byte_table(seed: int = 16) -> bytes:
    """256 quantiles of the high byte of float16 N(0, 0.02): maps a uniform byte to one."""
    rng = random.Random(seed)
    highs = sorted(struct.pack("<e", rng.gauss(0, 0.02))[1] for _ in range(65536))
    return bytes(highs[i * 256 + 128] for i in range(256))


class Float16Weights:
    """A read-only file of ``size`` float16-like bytes, made as it is read."""

    def __init__(self, size: int) -> None:
        self.left = size
        self._table = _high_byte_table()

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        n -= n % 2 if n < self.left else 0
        raw = os.urandom(n)
        out = bytearray(n)
        half = (n + 1) // 2
        out[0::2] = raw[:half]
        out[1::2] = raw[half:].translate(self._table)
        self.left -= n
        return bytes(out)


def make_layer(path: Path, size: int, seed: int = 1) -> int:
    """A tar of ~size bytes of lognormal-sized files from the pool; the member count.

    The layer behind docs/engine-measurements.md (``tables``).
    """
    rng = random.Random(seed)
    pool = make_pool(32 * MiB, rng)
    n = 0
    written = 0
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        while written < size:
            fsize = min(int(rng.lognormvariate(9, 2.5)), 16 * MiB, size - written + 1)
            start = rng.randrange(0, len(pool) - fsize)
            info = tarfile.TarInfo(f"d{n % 97}/f{n}.bin")
            info.size = fsize
            tf.addfile(info, io.BytesIO(pool[start : start + fsize]))
            written += fsize + 512
            n += 1
    return n
