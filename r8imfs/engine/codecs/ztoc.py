"""SOCI's zTOC: the per-layer table of contents plus gzip checkpoints, as FlatBuffers.

Schema: awslabs/soci-snapshotter ``ztoc/fbs/ztoc.fbs`` (namespace ``ztoc``,
root ``Ztoc``); field ids are declaration order, and that order is the wire
format. Checkpoints (``CompressionInfo.checkpoints``) are the ``gzip_zinfo``
blob of ``ztoc/compression/gzip_zinfo.c``: i32 count, i64 span size, then per
checkpoint i64 in, i64 out, u8 bits and the 32 KiB window, little-endian (a v1
blob leaves out checkpoint 0, implied in=10, out=0, bits=0); for an
uncompressed tar, a ``zinfo.TarZinfo`` FlatBuffer {version i32, span_size
i64, size i64}. ``span_digests`` are ``sha256:<hex>`` of each span's
*compressed* bytes. A zTOC's identity is the sha256 of its bytes.

A zTOC comes from whoever published it, so ``decode`` bounds-checks every
read and ``validate`` checks it against the layer it claims to describe
(sizes, offsets in range and in order, safe names, bounded counts) before
anything trusts it: a failure is one ``InvalidZtoc`` line. Conformance is to
the schema and the soci-snapshotter source; there is no SOCI tool in Debian
to cross-check against.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from r8imfs.engine.codecs import _flatbuf as fb
from r8imfs.engine.codecs.zran import WINDOW, Checkpoint
from r8imfs.errors import CorruptLayer
from r8imfs.oci.soci import MAX_ZTOC

VERSION = "0.9"
GZIP = "gzip"
UNCOMPRESSED = "uncompressed"
_ALGORITHMS = {1: GZIP, 2: UNCOMPRESSED}
TYPES = ("reg", "dir", "symlink", "hardlink", "char", "block", "fifo")

MAX_FILES = 10_000_000
MAX_XATTRS = 4096  # PAX records on one entry
MAX_NAME = 64 * 1024
MAX_SPANS = 1 << 21  # 8 TiB of tar at 4 MiB spans
#: deflate expands at most ~1032:1; anything claiming more is lying.
MAX_RATIO = 1040

CHECKPOINT_SIZE = 8 + 8 + 1 + WINDOW
_HEADER = 4 + 8
_DIGEST = re.compile(rb"sha256:[0-9a-f]{64}")


class InvalidZtoc(CorruptLayer):
    """A zTOC that is malformed or does not match its layer; fall back to local indexing."""


@dataclass(frozen=True, slots=True)
class FileMetadata:
    """One tar entry as the zTOC lists it (``ztoc.FileMetadata``).

    ``uncompressed_offset`` is where the entry's *data* starts in the tar;
    ``xattrs`` are the raw PAX records of the entry, sorted by key.
    """

    name: str
    type: str
    uncompressed_offset: int
    uncompressed_size: int
    linkname: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mod_time: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Ztoc:
    version: str
    build_tool_identifier: str
    compressed_archive_size: int
    uncompressed_archive_size: int
    files: tuple[FileMetadata, ...]
    compression: str  # GZIP or UNCOMPRESSED
    max_span_id: int
    span_digests: tuple[str, ...]
    checkpoints: bytes | memoryview  # the zinfo blob, as stored


@dataclass(frozen=True, slots=True)
class Spans:
    """Where each span starts and ends, compressed and uncompressed.

    Span ``i`` covers compressed ``[cstart[i], cend[i])`` and uncompressed
    ``[ustart[i], uend[i])``; for gzip, ``checkpoints[i]`` resumes it.
    """

    span_size: int
    cstart: tuple[int, ...]
    cend: tuple[int, ...]
    ustart: tuple[int, ...]
    uend: tuple[int, ...]
    checkpoints: tuple[Checkpoint, ...] = ()

    def __len__(self) -> int:
        return len(self.cstart)


def _s(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# -- encoding -------------------------------------------------------------------


def encode(z: Ztoc) -> bytes:
    """The zTOC's FlatBuffer bytes (field ids in schema order)."""
    toc = fb.Table([fb.Vector([_file_table(f) for f in z.files])])
    algorithm = {v: k for k, v in _ALGORITHMS.items()}[z.compression]
    info = fb.Table(
        [
            fb.Scalar("i8", algorithm, default=1),
            fb.Scalar("i32", z.max_span_id),
            fb.Vector([fb.Str(_b(d)) for d in z.span_digests]),
            fb.Bytes(bytes(z.checkpoints)),
        ]
    )
    root = fb.Table(
        [
            fb.Str(_b(z.version)),
            fb.Str(_b(z.build_tool_identifier)),
            fb.Scalar("i64", z.compressed_archive_size),
            fb.Scalar("i64", z.uncompressed_archive_size),
            toc,
            info,
        ]
    )
    return fb.Writer().finish(root)


def _file_table(f: FileMetadata) -> fb.Table:
    xattrs = [fb.Table([fb.Str(_b(k)), fb.Str(_b(v))]) for k, v in sorted(f.xattrs)]
    return fb.Table(
        [
            fb.Str(_b(f.name)),
            fb.Str(_b(f.type)),
            fb.Scalar("i64", f.uncompressed_offset),
            fb.Scalar("i64", f.uncompressed_size),
            fb.Str(_b(f.linkname)),
            fb.Scalar("i64", f.mode),
            fb.Scalar("u32", f.uid),
            fb.Scalar("u32", f.gid),
            fb.Str(_b(f.uname)),
            fb.Str(_b(f.gname)),
            fb.Str(_b(f.mod_time)),
            fb.Scalar("i64", f.devmajor),
            fb.Scalar("i64", f.devminor),
            fb.Vector(xattrs),
        ]
    )


def encode_gzip_zinfo(span_size: int, checkpoints: list[Checkpoint]) -> bytes:
    """The v2 ``gzip_zinfo`` blob: every checkpoint, checkpoint 0 included."""
    parts = [struct.pack("<iq", len(checkpoints), span_size)]
    for cp in checkpoints:
        if len(cp.window) != WINDOW:
            raise ValueError("a checkpoint window is 32 KiB")
        parts.append(struct.pack("<qqB", cp.cin, cp.out, cp.bits))
        parts.append(cp.window)
    return b"".join(parts)


def encode_tar_zinfo(span_size: int, size: int) -> bytes:
    """``zinfo.TarZinfo``: version 2, the span size and the tar's size."""
    return fb.Writer().finish(
        fb.Table([fb.Scalar("i32", 2), fb.Scalar("i64", span_size), fb.Scalar("i64", size)])
    )


# -- decoding -------------------------------------------------------------------


def decode(data: bytes) -> Ztoc:
    """Parse zTOC bytes; ``InvalidZtoc`` for anything that is not one."""
    if len(data) > MAX_ZTOC:
        raise InvalidZtoc(f"zTOC of {len(data)} bytes is over the {MAX_ZTOC} limit")
    try:
        return _decode(fb.Reader(data))
    except fb.FlatbufError as exc:
        raise InvalidZtoc(f"malformed zTOC: {exc}") from exc


def _decode(r: fb.Reader) -> Ztoc:
    root = r.root()
    toc = r.ref(root, 4)
    info = r.ref(root, 5)
    if toc is None or info is None:
        raise InvalidZtoc("malformed zTOC: no TOC or no compression info")
    algorithm = r.scalar(info, 0, "i8", 1)
    if algorithm not in _ALGORITHMS:
        raise InvalidZtoc(f"zTOC compression algorithm {algorithm} is not gzip or uncompressed")
    start, n = r.vector(info, 2, 4)
    digests = tuple(_digest(r.string_at(r.element(start, k))) for k in range(n))
    return Ztoc(
        version=_s(r.string(root, 0)),
        build_tool_identifier=_s(r.string(root, 1)),
        compressed_archive_size=r.scalar(root, 2, "i64"),
        uncompressed_archive_size=r.scalar(root, 3, "i64"),
        files=_files(r, toc),
        compression=_ALGORITHMS[algorithm],
        max_span_id=r.scalar(info, 1, "i32"),
        span_digests=digests,
        checkpoints=r.bytes_view(info, 3),  # cut into windows once: no second copy
    )


def _digest(raw: bytes) -> str:
    if not _DIGEST.fullmatch(raw):
        raise InvalidZtoc(f"zTOC span digest {raw[:80]!r} is not sha256:<hex>")
    return raw.decode()


def _files(r: fb.Reader, toc: int) -> tuple[FileMetadata, ...]:
    start, n = r.vector(toc, 0, 4)
    if n > MAX_FILES:
        raise InvalidZtoc(f"zTOC lists {n} files (the limit is {MAX_FILES})")
    return tuple(_file(r, t) for t in r.elements(start, n))


#: ``ztoc.FileMetadata``'s fields in schema order (``Reader.fields`` kinds):
#: name, type, uncompressed_offset, uncompressed_size, linkname, mode, uid,
#: gid, uname, gname, mod_time, devmajor, devminor, xattrs.
_FILE_FIELDS = "rrqqrqIIrrrqqr"
_XATTR_FIELDS = "rr"  # key, value


def _file(r: fb.Reader, t: int) -> FileMetadata:
    name, kind, off, size, link, mode, uid, gid, uname, gname, mtime, major, minor, xattrs = (
        r.fields(t, _FILE_FIELDS)
    )
    name_, kind_, link_, uname_, gname_, mtime_ = r.texts((name, kind, link, uname, gname, mtime))
    return FileMetadata(
        name_,
        kind_,
        off or 0,
        size or 0,
        link_,
        mode or 0,
        uid or 0,
        gid or 0,
        uname_,
        gname_,
        mtime_,
        major or 0,
        minor or 0,
        () if xattrs is None else _xattrs(r, xattrs),
    )


def _xattrs(r: fb.Reader, vector: int) -> tuple[tuple[str, str], ...]:
    start, n = r.vector_at(vector, 4)
    if n > MAX_XATTRS:
        raise InvalidZtoc(f"a zTOC entry has {n} PAX records (the limit is {MAX_XATTRS})")
    if n == 0:
        return ()
    pairs = (r.texts(r.fields(x, _XATTR_FIELDS)) for x in r.elements(start, n))
    return tuple((key, value) for key, value in pairs)


def decode_gzip_zinfo(blob: bytes | memoryview) -> tuple[int, list[Checkpoint]]:
    """(span size, checkpoints) of a v1 or v2 ``gzip_zinfo`` blob."""
    if len(blob) < _HEADER:
        raise InvalidZtoc("zTOC checkpoints are shorter than their header")
    count, span_size = struct.unpack_from("<iq", blob, 0)
    if count < 1:
        raise InvalidZtoc(f"zTOC has {count} checkpoints")
    if len(blob) == _HEADER + count * CHECKPOINT_SIZE:
        cps = []
    elif len(blob) == _HEADER + (count - 1) * CHECKPOINT_SIZE:
        cps = [Checkpoint(10, 0, 0, bytes(WINDOW))]  # v1: checkpoint 0 is implied
    else:
        raise InvalidZtoc(f"zTOC checkpoints: {len(blob)} bytes cannot hold {count} checkpoints")
    pos = _HEADER
    while pos < len(blob):
        cin, out, bits = struct.unpack_from("<qqB", blob, pos)
        window = bytes(blob[pos + 17 : pos + CHECKPOINT_SIZE])
        cps.append(Checkpoint(cin, out, bits, window))
        pos += CHECKPOINT_SIZE
    return span_size, cps


def decode_tar_zinfo(blob: bytes | memoryview) -> tuple[int, int, int]:
    """(version, span size, size) of a ``TarZinfo``."""
    try:
        r = fb.Reader(blob)
        root = r.root()
        return r.scalar(root, 0, "i32"), r.scalar(root, 1, "i64"), r.scalar(root, 2, "i64")
    except fb.FlatbufError as exc:
        raise InvalidZtoc(f"malformed TarZinfo: {exc}") from exc


# -- validation -------------------------------------------------------------------


def validate(z: Ztoc, layer_size: int, span_size: int | None = None) -> Spans:
    """Check ``z`` against the layer it describes; its spans, or ``InvalidZtoc``.

    ``layer_size`` is the layer descriptor's size; ``span_size``, if given,
    the span size its SOCI index announced.
    """
    if z.compressed_archive_size != layer_size:
        raise InvalidZtoc(
            f"zTOC is for a blob of {z.compressed_archive_size} bytes, the layer has {layer_size}"
        )
    usize = z.uncompressed_archive_size
    limit = layer_size if z.compression == UNCOMPRESSED else layer_size * MAX_RATIO + WINDOW
    if not 0 <= usize <= limit:
        raise InvalidZtoc(f"zTOC claims {usize} uncompressed bytes for a {layer_size}-byte layer")
    if z.max_span_id + 1 != len(z.span_digests):
        raise InvalidZtoc(
            f"zTOC has max_span_id {z.max_span_id} but {len(z.span_digests)} span digests"
        )
    spans = _gzip_spans(z, limit) if z.compression == GZIP else _tar_spans(z)
    if len(spans) != len(z.span_digests):
        raise InvalidZtoc(f"zTOC has {len(spans)} spans but {len(z.span_digests)} span digests")
    if span_size is not None and spans.span_size != span_size:
        raise InvalidZtoc(f"zTOC span size {spans.span_size}, its index says {span_size}")
    validate_files(z.files, usize)
    return spans


def _gzip_spans(z: Ztoc, limit: int) -> Spans:
    """Spans from the checkpoints. A checkpoint may lie past the tar's end (in the
    zeros after the end-of-archive blocks, which Go's reader never reaches): such
    spans are valid, they are just never read."""
    span_size, cps = decode_gzip_zinfo(z.checkpoints)
    if span_size <= 0:
        raise InvalidZtoc(f"zTOC span size {span_size}")
    size, usize = z.compressed_archive_size, z.uncompressed_archive_size
    if cps[0].out != 0:
        raise InvalidZtoc("zTOC's first checkpoint is not at the start of the data")
    for k, cp in enumerate(cps):
        prev = cps[k - 1] if k else None
        if not 0 <= cp.bits <= 7 or not 10 <= cp.cin <= size or cp.out > limit:
            raise InvalidZtoc(f"zTOC checkpoint {k} is outside the layer")
        if prev is not None and (cp.cin <= prev.cin or cp.out <= prev.out):
            raise InvalidZtoc(f"zTOC checkpoint {k} does not follow checkpoint {k - 1}")
    cstart = tuple(cp.start for cp in cps)
    cend = (*(cp.cin for cp in cps[1:]), size)
    ustart = tuple(cp.out for cp in cps)
    uend = (*ustart[1:], max(usize, ustart[-1]))
    return Spans(span_size, cstart, cend, ustart, uend, tuple(cps))


def _tar_spans(z: Ztoc) -> Spans:
    version, span_size, size = decode_tar_zinfo(z.checkpoints)
    if span_size <= 0 or size != z.compressed_archive_size:
        raise InvalidZtoc(f"TarZinfo span size {span_size}, size {size} do not fit the layer")
    if version != 2:
        raise InvalidZtoc(f"TarZinfo version {version} is not 2")
    if size > span_size * MAX_SPANS:
        raise InvalidZtoc(f"TarZinfo spans of {span_size} bytes are too many for {size} bytes")
    starts = tuple(range(0, size, span_size))
    ends = (*starts[1:], size)
    return Spans(span_size, starts, ends, starts, ends)


def validate_files(files: tuple[FileMetadata, ...], usize: int) -> None:
    """Types known, names safe, data inside the tar and in order (SOCI's own rule)."""
    next_header = 0
    for f in sorted(files, key=lambda f: f.uncompressed_offset):
        _check_name(f.name, "name")
        if f.type not in TYPES:
            raise InvalidZtoc(f"zTOC entry {f.name[:200]!r} has unknown type {f.type[:40]!r}")
        off, size = f.uncompressed_offset, f.uncompressed_size
        if off < 0 or size < 0 or off + size > usize or off % 512:
            raise InvalidZtoc(f"zTOC entry {f.name[:200]!r} has its data outside the tar")
        if off < next_header + 512:
            raise InvalidZtoc(f"zTOC entry {f.name[:200]!r} overlaps the entry before it")
        next_header = off + size + (-size % 512)
        if f.type == "hardlink":
            _check_name(f.linkname, "hardlink target")
        if f.mode < 0 or f.devmajor < 0 or f.devminor < 0:
            raise InvalidZtoc(f"zTOC entry {f.name[:200]!r} has a negative mode or device")


def _check_name(name: str, what: str) -> None:
    if not name or len(name) > MAX_NAME or "\0" in name:
        raise InvalidZtoc(f"zTOC entry {what} {name[:200]!r} is empty, too long or has a NUL")
    if ".." in name.split("/"):
        raise InvalidZtoc(f"zTOC entry {what} {name[:200]!r} climbs out of the layer with '..'")


def span_of(spans: Spans, offset: int) -> int:
    """The span holding uncompressed ``offset`` (the last one for offsets past the end)."""
    lo, hi = 0, len(spans) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if spans.ustart[mid] <= offset:
            lo = mid
        else:
            hi = mid - 1
    return lo
