"""Builders for the archive tests: tars, compressed layers, reference data."""

from __future__ import annotations

import gzip
import io
import random
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field

MiB = 1024 * 1024


@dataclass
class M:
    """A tar member to build. kind: f d l(symlink) h(hardlink) c b p(fifo)."""

    kind: str
    path: str
    data: bytes = b""
    link: str = ""
    mode: int | None = None
    pax: dict[str, str] = field(default_factory=dict)
    major: int = 0
    minor: int = 0
    uid: int = 0
    mtime: float = 1_700_000_000


_TYPES = {
    "f": tarfile.REGTYPE,
    "d": tarfile.DIRTYPE,
    "l": tarfile.SYMTYPE,
    "h": tarfile.LNKTYPE,
    "c": tarfile.CHRTYPE,
    "b": tarfile.BLKTYPE,
    "p": tarfile.FIFOTYPE,
}


def make_tar(members: Iterable[M], fmt: int = tarfile.PAX_FORMAT, *, end: bool = True) -> bytes:
    """A tar of ``members``; ``end=False`` leaves out the end-of-archive blocks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for m in members:
            _add(tf, m)
        without_end = buf.getvalue()
    return buf.getvalue() if end else without_end


def _add(tf: tarfile.TarFile, m: M) -> None:
    info = tarfile.TarInfo(m.path)
    info.type = _TYPES[m.kind]
    info.mode = m.mode if m.mode is not None else (0o755 if m.kind == "d" else 0o644)
    info.uid = m.uid
    info.mtime = m.mtime
    info.linkname = m.link
    info.devmajor, info.devminor = m.major, m.minor
    if m.pax:
        info.pax_headers = dict(m.pax)
    if m.kind == "f":
        info.size = len(m.data)
        tf.addfile(info, io.BytesIO(m.data))
    else:
        tf.addfile(info)


def payload(size: int, seed: int = 0) -> bytes:
    """Compressible-but-not-trivial bytes (about 2:1 with deflate)."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 9)).hex().encode() for _ in range(512)]
    out = bytearray()
    while len(out) < size:
        if rng.random() < 0.2:
            out += rng.randbytes(256)
        else:
            out += b" ".join(rng.choices(words, k=32))
    return bytes(out[:size])


def big_tar(total: int, seed: int = 0) -> bytes:
    """A tar of files of assorted sizes adding up to about ``total`` bytes."""
    rng = random.Random(seed)
    members = []
    used, n = 0, 0
    while used < total:
        size = min(int(rng.lognormvariate(9, 2)), 2 * MiB)
        members.append(M("f", f"dir{n % 7}/file{n}", payload(size, seed=n)))
        used += size + 512
        n += 1
    return make_tar(members)


def gzip_members(*parts: bytes) -> bytes:
    return b"".join(gzip.compress(p, mtime=0) for p in parts)
