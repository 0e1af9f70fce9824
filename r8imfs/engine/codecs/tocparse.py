"""TOC entries → ``Entry`` objects and verified-chunk lists, checking every field.

The TOC passed its digest, so it is what the image's author published; but
an author can be hostile, so nothing in it is used unchecked (``toc`` has the
list). Field names are shared by zstd:chunked (containers/storage
``minimal.FileMetadata``) and eStargz (``estargz.TOCEntry``); eStargz adds
``innerOffset`` and puts ``chunkDigest`` on every chunk, zstd:chunked adds
``endOffset`` and sets chunk fields only on files of two chunks or more.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import datetime
import functools
import re
from dataclasses import dataclass, field
from typing import Any

from r8imfs.engine.entry import Entry, Kind, normalise_path
from r8imfs.errors import BadToc, UnsafeLayer

_KINDS = {
    "reg": Kind.FILE,
    "dir": Kind.DIR,
    "symlink": Kind.SYMLINK,
    "hardlink": Kind.HARDLINK,
    "char": Kind.CHARDEV,
    "block": Kind.BLOCKDEV,
    "fifo": Kind.FIFO,
}
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_INT = 1 << 62
_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One verifiable piece of a file body.

    ``cstart``/``cend``: its compressed range in the blob (zstd frames, or a
    gzip member's start); decoding from ``cstart`` yields ``inner`` bytes to
    skip, then the ``size`` bytes at ``offset`` in the file, whose sha256 is
    ``digest``."""

    cstart: int
    cend: int
    inner: int
    offset: int
    size: int
    digest: str


@dataclass(frozen=True, slots=True)
class TocFile:
    path: str
    start: int  # virtual offset of its first byte (its Entry's data_offset)
    size: int
    digest: str  # of the whole body, "" when the TOC gives none
    chunks: tuple[Chunk, ...]


@dataclass(slots=True)
class _Body:
    path: str
    name: str  # as in the TOC, to match its "chunk" entries
    start: int
    size: int
    digest: str
    end: int  # endOffset, 0 if absent
    specs: list[dict[str, Any]] = field(default_factory=list)


def build_index(
    items: list[Any], data_end: int, *, allow_shared: bool
) -> tuple[list[Entry], tuple[TocFile, ...], int]:
    """(entries, files by virtual start, virtual size). ``allow_shared``: chunks
    may share a compressed start (eStargz packs small files in one member)."""
    found: dict[str, Entry] = {}
    bodies: list[_Body] = []
    total = ordinal = 0
    current: _Body | None = None  # the body the next "chunk" entries belong to
    for item in items:
        if not isinstance(item, dict):
            raise BadToc("TOC entry is not an object")
        if item.get("type") == "chunk":
            if current is None or current.name != item.get("name"):
                raise BadToc(f"TOC chunk entry for {item.get('name')!r} follows no such file")
            current.specs.append(item)
            continue
        entry = to_entry(item, ordinal, total)
        ordinal += 1
        found.pop(entry.path, None)
        found[entry.path] = entry
        current = None
        if entry.kind is Kind.FILE and entry.size:
            current = _body(item, entry)
            bodies.append(current)
            total += entry.size
            if total > _MAX_INT:
                raise BadToc("TOC file sizes add up to an impossible total")
    starts = sorted({_int(s.get("offset", 0), "offset") for b in bodies for s in b.specs})
    files = tuple(_file(b, starts, data_end) for b in bodies)
    _check_overlaps(files, allow_shared)
    return list(found.values()), files, total


def _body(item: dict[str, Any], entry: Entry) -> _Body:
    digest = item.get("digest") or ""
    if digest and (not isinstance(digest, str) or not DIGEST.fullmatch(digest)):
        raise BadToc(f"TOC digest {digest!r} of {entry.path!r} is not a sha256 digest")
    end = _int(item.get("endOffset", 0), "endOffset")
    return _Body(entry.path, item["name"], entry.data_offset, entry.size, digest, end, [item])


def _file(b: _Body, starts: list[int], data_end: int) -> TocFile:
    """The body's chunks: tiling the file exactly, each with a digest and range."""
    chunks: list[Chunk] = []
    at = 0
    for i, spec in enumerate(b.specs):
        last = i == len(b.specs) - 1
        cstart = _int(spec.get("offset", 0), "offset")
        offset = _int(spec.get("chunkOffset", 0), "chunkOffset")
        size = _int(spec.get("chunkSize", 0), "chunkSize") or (b.size - offset if last else 0)
        if offset != at or size <= 0 or cstart <= 0:
            raise BadToc(f"TOC chunks of {b.path!r} do not tile the file (chunk {i})")
        at += size
        digest = spec.get("chunkDigest") or (b.digest if len(b.specs) == 1 else "")
        if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
            raise BadToc(f"TOC chunk {i} of {b.path!r} has no usable digest")
        cend = _chunk_end(b, i, starts, data_end)
        if not cstart < cend <= data_end:
            raise BadToc(f"TOC chunk {i} of {b.path!r} lies outside the layer's data")
        inner = _int(spec.get("innerOffset", 0), "innerOffset")
        chunks.append(Chunk(cstart, cend, inner, offset, size, digest))
    if at != b.size:
        raise BadToc(f"TOC chunks of {b.path!r} cover {at} of its {b.size} bytes")
    return TocFile(b.path, b.start, b.size, b.digest, tuple(chunks))


def _chunk_end(b: _Body, i: int, starts: list[int], data_end: int) -> int:
    """Where chunk ``i`` ends: the next chunk of the file, the file's endOffset,
    or (TOCs without endOffset) the next chunk start in the layer or the TOC."""
    if b.end:
        if i + 1 < len(b.specs):
            return _int(b.specs[i + 1].get("offset", 0), "offset")
        return b.end
    j = bisect.bisect_right(starts, _int(b.specs[i].get("offset", 0), "offset"))
    return starts[j] if j < len(starts) else data_end


def _check_overlaps(files: tuple[TocFile, ...], allow_shared: bool) -> None:
    ranges = sorted({(c.cstart, c.cend) for f in files for c in f.chunks})
    for (s0, e0), (s1, e1) in zip(ranges, ranges[1:], strict=False):
        if e0 > s1:
            raise BadToc(f"TOC compressed ranges {s0}..{e0} and {s1}..{e1} overlap")
    if not allow_shared:
        seen: set[int] = set()
        for f in files:
            for c in f.chunks:
                if c.cstart in seen:
                    raise BadToc(f"two TOC chunks start at compressed offset {c.cstart}")
                seen.add(c.cstart)


def to_entry(item: dict[str, Any], ordinal: int, virtual: int) -> Entry:
    """One non-chunk TOC entry as the tar index would make it."""
    type_ = item.get("type")
    kind = _KINDS.get(type_) if isinstance(type_, str) else None
    if kind is None:
        raise BadToc(f"TOC entry of unknown type {item.get('type')!r}")
    path = safe_path(item.get("name"))
    link = item.get("linkName", "") or ""
    if not isinstance(link, str) or "\0" in link:
        raise BadToc(f"TOC link target of {path!r} is not a valid path")
    if kind is Kind.HARDLINK:
        link = safe_path(link)
    return Entry(
        path=path,
        kind=kind,
        mode=_int(item.get("mode", 0), "mode") & 0o7777,
        uid=_int(item.get("uid", 0), "uid"),
        gid=_int(item.get("gid", 0), "gid"),
        mtime=_time(item.get("modtime")),
        size=_int(item.get("size", 0), "size") if kind is Kind.FILE else 0,
        linkname=link,
        devmajor=_int(item.get("devMajor", 0), "devMajor"),
        devminor=_int(item.get("devMinor", 0), "devMinor"),
        xattrs=_xattrs(item.get("xattrs"), path),
        data_offset=virtual,
        ordinal=ordinal,
    )


def safe_path(name: Any) -> str:
    """A TOC name normalised like a tar member's; BadToc if unsafe."""
    if not isinstance(name, str) or "\0" in name:
        raise BadToc(f"TOC entry name {name!r} is not a valid path")
    try:
        return normalise_path(name)
    except UnsafeLayer as exc:
        raise BadToc(f"TOC entry {name!r} is unsafe: {exc.message}") from exc


def _int(value: Any, what: str) -> int:
    if type(value) is int and 0 <= value <= _MAX_INT:
        return value  # the common case first: ~11 fields of every entry
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT:
        raise BadToc(f"TOC field {what} = {value!r} is not a sensible integer")
    return value


def _time(value: Any) -> float:
    """RFC 3339 (Go ``time.Time`` JSON, up to nanoseconds) as epoch seconds."""
    if not value:
        return 0.0
    if not isinstance(value, str):
        raise BadToc(f"TOC time {value!r} is not RFC 3339")
    return _parse_time(value)


@functools.lru_cache(maxsize=4096)
def _parse_time(value: str) -> float:
    """``_time`` of a string; remembered: a layer's files mostly share a few
    times (a build's, or the epoch), and parsing one is ~10x a lookup."""
    m = _TIME.fullmatch(value)
    if m is None:
        raise BadToc(f"TOC time {value!r} is not RFC 3339")
    zone = "+00:00" if m[3] == "Z" else m[3]
    try:
        when = datetime.datetime.fromisoformat(m[1] + zone)
    except ValueError as exc:
        raise BadToc(f"TOC time {value!r} is not a valid date") from exc
    return when.timestamp() + (int(m[2].ljust(9, "0")) / 1e9 if m[2] else 0.0)


def _xattrs(value: Any, path: str) -> dict[str, bytes]:
    if not value:
        return {}
    if not isinstance(value, dict):
        raise BadToc(f"TOC xattrs of {path!r} are not an object")
    out: dict[str, bytes] = {}
    for key, data in value.items():
        if not isinstance(data, str):
            raise BadToc(f"TOC xattr {key!r} of {path!r} is not base64 text")
        try:
            out[key] = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadToc(f"TOC xattr {key!r} of {path!r} is not base64") from exc
    return out
