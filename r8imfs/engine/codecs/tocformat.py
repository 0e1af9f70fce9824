"""Byte-level constants of the TOC layer formats: zstd:chunked and eStargz.

Shared by the writer (``chunkedwrite``/``zstdwrite``) and the reader
(``toc``) so both sides agree on one spelling of every key and magic. The
facts come from containers/storage ``pkg/chunked`` (zstd:chunked, three
dialects) and containerd/stargz-snapshotter ``estargz`` (see docs/formats.md):

* dialect A (containers/storage >= 1.50): ``io.github.containers.zstd-chunked.*``
  annotations, tar-split, 64-byte footer ending in ``GNUlInUx``;
* dialect B (containers/storage <= 1.43, Debian 12's skopeo/podman/buildah):
  ``io.containers.zstd-chunked.*`` annotations, 40-byte footer ``GnUlInUx``;
* dialect C (stargz-snapshotter ``zstdchunked``): B's keys plus the eStargz
  TOC digest, eStargz TOC entries;
* eStargz: gzip members, ``stargz.index.json``, 51-byte gzip footer.
"""

from __future__ import annotations

import struct

MANIFEST_CHECKSUM = "io.github.containers.zstd-chunked.manifest-checksum"
MANIFEST_POSITION = "io.github.containers.zstd-chunked.manifest-position"
TARSPLIT_POSITION = "io.github.containers.zstd-chunked.tarsplit-position"
LEGACY_MANIFEST_CHECKSUM = "io.containers.zstd-chunked.manifest-checksum"
LEGACY_MANIFEST_POSITION = "io.containers.zstd-chunked.manifest-position"
STARGZ_TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
STARGZ_UNCOMPRESSED_SIZE = "io.containers.estargz.uncompressed-size"

SKIPPABLE_MAGIC = 0x184D2A50  # the zstd:chunked TOC, tar-split and footer frames
FOOTER_MAGIC = b"GNUlInUx"  # dialect A, 64-byte footer
LEGACY_FOOTER_MAGIC = b"GnUlInUx"  # dialects B and C, 40-byte footer
MANIFEST_TYPE_CRFS = 1
FOOTER_SIZE = 64
LEGACY_FOOTER_SIZE = 40
STARGZ_FOOTER_SIZE = 51
STARGZ_TOC_NAME = "stargz.index.json"

_SKIP_HEAD = struct.Struct("<II")
_FOOTER = struct.Struct("<7Q8s")
_LEGACY_FOOTER = struct.Struct("<4Q8s")


def skippable_frame(data: bytes) -> bytes:
    """A zstd skippable frame (magic 0x184D2A50) around ``data``."""
    return _SKIP_HEAD.pack(SKIPPABLE_MAGIC, len(data)) + data


def chunked_footer(
    toc_offset: int,
    toc_compressed: int,
    toc_uncompressed: int,
    tarsplit_offset: int,
    tarsplit_compressed: int,
    tarsplit_uncompressed: int,
) -> bytes:
    """The 64-byte dialect-A footer (offsets point past each frame's 8-byte header)."""
    return _FOOTER.pack(
        toc_offset,
        toc_compressed,
        toc_uncompressed,
        MANIFEST_TYPE_CRFS,
        tarsplit_offset,
        tarsplit_compressed,
        tarsplit_uncompressed,
        FOOTER_MAGIC,
    )


def parse_chunked_footer(tail: bytes) -> tuple[int, int, int] | None:
    """(TOC offset, compressed length, uncompressed length) from the last bytes
    of a blob, for a 64-byte or 40-byte zstd:chunked footer; None if neither."""
    if len(tail) >= FOOTER_SIZE and tail[-8:] == FOOTER_MAGIC:
        off, clen, ulen, kind, *_ = _FOOTER.unpack(tail[-FOOTER_SIZE:])
    elif len(tail) >= LEGACY_FOOTER_SIZE and tail[-8:] == LEGACY_FOOTER_MAGIC:
        off, clen, ulen, kind, _ = _LEGACY_FOOTER.unpack(tail[-LEGACY_FOOTER_SIZE:])
    else:
        return None
    if kind != MANIFEST_TYPE_CRFS:
        return None
    return int(off), int(clen), int(ulen)


def parse_stargz_footer(tail: bytes) -> int | None:
    """The TOC offset from a 51-byte eStargz footer (an empty gzip member whose
    FEXTRA field reads ``SG`` + ``%016x`` + ``STARGZ``), or None."""
    if len(tail) < STARGZ_FOOTER_SIZE:
        return None
    f = tail[-STARGZ_FOOTER_SIZE:]
    if f[:4] != b"\x1f\x8b\x08\x04" or f[10:12] != b"\x1a\x00" or f[12:16] != b"SG\x16\x00":
        return None
    text = f[16:38]
    if not text.endswith(b"STARGZ"):
        return None
    try:
        return int(text[:16], 16)
    except ValueError:
        return None


def parse_position(value: str, fields: int) -> tuple[int, ...]:
    """``"a:b:c[:d]"`` annotation values as integers; ValueError when malformed."""
    parts = value.split(":")
    if len(parts) != fields or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected {fields} ':'-separated integers, got {value!r}")
    return tuple(int(p) for p in parts)
