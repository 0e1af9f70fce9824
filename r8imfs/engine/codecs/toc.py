"""Layers with a table of contents: zstd:chunked (three dialects) and eStargz.

Theory of operation
-------------------
Trust starts at the layer descriptor, which the (digest-pinned) manifest
carries: its annotations hold the TOC's digest, and for zstd:chunked its
position. ``load_toc`` reads the TOC with one range read (two for eStargz
when the TOC is far from the end), checks it against that digest, and only
then parses it. Everything the TOC says is then checked for sense before any
of it is used: names normalise inside the layer, types are known, each
file's chunks tile the file exactly, every compressed range lies before the
TOC and no two overlap, every chunk has a digest (its own, or the file's
when the file is one chunk), counts and sizes are bounded. Any failure is a
``BadToc``: the caller then indexes the layer as a plain compressed stream.

What comes out (``TocIndex``) is what the mount needs: ``Entry`` objects as
``tarindex`` makes them, except that ``data_offset`` is a *virtual* offset
(files' bodies back to back in TOC order; ``size`` is their total), plus per
file the chunk list that ``tocread.TocReader`` fetches, decodes and verifies.
The TOC gives no tar offsets, so nothing here pretends to.

Dialects (see ``tocformat`` and docs/formats.md):

=========================  =====================================  ==========
kind                       found by                               digest of
=========================  =====================================  ==========
``zstd:chunked``           io.github.containers.zstd-chunked.*    compressed TOC
``zstd:chunked-legacy``    io.containers.zstd-chunked.*           compressed TOC
``estargz``                containerd.io/snapshot/stargz/toc.digest + footer
                                                                  TOC JSON
=========================  =====================================  ==========

stargz-snapshotter's zstd:chunked (legacy keys plus the eStargz digest) is
read through the legacy keys; both digests are checked when both are there.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import zstandard

from r8imfs import _gc
from r8imfs.engine.codecs import tocformat as tf
from r8imfs.engine.codecs.tocparse import DIGEST, Chunk, TocFile, build_index
from r8imfs.engine.entry import Entry
from r8imfs.engine.readat import ReadAt
from r8imfs.errors import BadToc

__all__ = ["Chunk", "TocFile", "TocIndex", "load_toc", "parse_toc", "toc_kind"]

#: Bounds against a hostile TOC (the largest real ones are a few MB).
MAX_TOC_BYTES = 256 * 1024 * 1024
MAX_ENTRIES = 2_000_000
#: eStargz: bytes read from the end at once, hoping the TOC is inside.
STARGZ_TAIL = 256 * 1024


@dataclass(frozen=True, slots=True)
class TocIndex:
    kind: str  # "zstd:chunked", "zstd:chunked-legacy" or "estargz"
    codec: str  # how chunks decode: "zstd" or "gzip"
    toc_digest: str  # the annotation it was checked against
    entries: list[Entry]
    files: tuple[TocFile, ...]  # bodies, by ``start``
    size: int  # total of the bodies: the virtual stream LayerReader.pread serves
    data_end: int  # no chunk reaches past this blob offset (where the TOC begins)
    starts: tuple[int, ...] = ()  # files[i].start, for bisect

    def file_at(self, offset: int) -> TocFile | None:
        """The file whose body holds virtual ``offset``."""
        i = bisect.bisect_right(self.starts, offset) - 1
        if i < 0 or offset >= self.files[i].start + self.files[i].size:
            return None
        return self.files[i]


def toc_kind(annotations: Mapping[str, str] | None) -> str | None:
    """Which TOC a layer descriptor announces, or None; BadToc for both
    zstd:chunked and eStargz (containers/image refuses such a layer too)."""
    a = annotations or {}
    if tf.MANIFEST_CHECKSUM in a:
        if tf.STARGZ_TOC_DIGEST in a:
            raise BadToc("layer carries both a zstd:chunked and an eStargz TOC digest")
        return "zstd:chunked"
    if tf.LEGACY_MANIFEST_CHECKSUM in a:
        return "zstd:chunked-legacy"
    if tf.STARGZ_TOC_DIGEST in a:
        return "estargz"
    return None


def load_toc(readat: ReadAt, annotations: Mapping[str, str] | None) -> TocIndex | None:
    """The verified, checked TOC of a layer, or None if it announces none.

    Blocking (range reads through ``readat``); raises BadToc for a TOC that
    cannot be trusted or used."""
    kind = toc_kind(annotations)
    if kind is None:
        return None
    a = annotations or {}
    if kind == "estargz":
        raw, data_end = _estargz_toc(readat, a[tf.STARGZ_TOC_DIGEST])
        return parse_toc(raw, kind, "gzip", a[tf.STARGZ_TOC_DIGEST], data_end)
    checksum_key, position_key = (
        (tf.MANIFEST_CHECKSUM, tf.MANIFEST_POSITION)
        if kind == "zstd:chunked"
        else (tf.LEGACY_MANIFEST_CHECKSUM, tf.LEGACY_MANIFEST_POSITION)
    )
    raw, data_end = _chunked_toc(readat, a[checksum_key], a.get(position_key))
    if tf.STARGZ_TOC_DIGEST in a:  # stargz-snapshotter's dialect: a second digest
        _check_digest(raw, a[tf.STARGZ_TOC_DIGEST], "TOC JSON")
    return parse_toc(raw, kind, "zstd", a[checksum_key], data_end)


def _chunked_toc(readat: ReadAt, checksum: str, position: str | None) -> tuple[bytes, int]:
    """The TOC JSON of a zstd:chunked blob, and where the TOC's frame begins."""
    if position is not None:
        try:
            offset, clen, ulen, kind = tf.parse_position(position, 4)
        except ValueError as exc:
            raise BadToc(f"zstd:chunked manifest-position: {exc}") from exc
    else:  # only the footer says where: it must be the blob's last bytes
        found = tf.parse_chunked_footer(readat.read_at(max(0, readat.size - 64), 64))
        if found is None:
            raise BadToc("zstd:chunked layer without a manifest position or footer")
        (offset, clen, ulen), kind = found, tf.MANIFEST_TYPE_CRFS
    if kind != tf.MANIFEST_TYPE_CRFS:
        raise BadToc(f"zstd:chunked manifest type {kind} is not 1")
    if not 8 <= offset <= offset + clen <= readat.size or max(clen, ulen) > MAX_TOC_BYTES:
        raise BadToc(f"zstd:chunked TOC at {offset}+{clen} ({ulen} uncompressed) is out of range")
    compressed = readat.read_at(offset, clen)
    _check_digest(compressed, checksum, "compressed TOC")
    raw = _unzstd(compressed, ulen + 1)  # one byte more than promised tells a liar
    if len(raw) != ulen:
        raise BadToc(f"zstd:chunked TOC is {len(raw)} bytes, its position says {ulen}")
    return raw, offset - 8


def _unzstd(data: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes of what ``data`` decompresses to (no zstd bomb)."""
    parts: list[bytes] = []
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(data), read_across_frames=True
        )
        while limit > 0 and (piece := reader.read(min(limit, 1 << 20))):
            parts.append(piece)
            limit -= len(piece)
    except zstandard.ZstdError as exc:
        raise BadToc(f"zstd:chunked TOC does not decompress: {exc}") from exc
    return b"".join(parts)


def _estargz_toc(readat: ReadAt, digest: str) -> tuple[bytes, int]:
    """The eStargz TOC JSON (a tar entry inside the last gzip member before the
    footer), and the blob offset where that member begins."""
    size = readat.size
    tail_at = max(0, size - STARGZ_TAIL)
    tail = readat.read_at(tail_at, size - tail_at)
    offset = tf.parse_stargz_footer(tail)
    if offset is None:
        raise BadToc("eStargz layer without its 51-byte footer")
    end = size - tf.STARGZ_FOOTER_SIZE
    if not 0 <= offset < end or end - offset > MAX_TOC_BYTES:
        raise BadToc(f"eStargz TOC offset {offset} is out of range")
    member = tail[offset - tail_at : end - tail_at] if offset >= tail_at else b""
    member = member or readat.read_at(offset, end - offset)
    d = zlib.decompressobj(wbits=31)
    try:
        tar = d.decompress(member, MAX_TOC_BYTES + 4096)
    except zlib.error as exc:
        raise BadToc(f"eStargz TOC does not decompress: {exc}") from exc
    raw = _tar_member(tar, tf.STARGZ_TOC_NAME)
    _check_digest(raw, digest, "TOC JSON")
    return raw, offset


def _tar_member(tar: bytes, name: str) -> bytes:
    try:
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as t:
            member = t.next()
            if member is None or member.name != name or not member.isreg():
                raise BadToc(f"eStargz TOC member is not {name!r}")
            f = t.extractfile(member)
            assert f is not None
            return f.read()
    except tarfile.TarError as exc:
        raise BadToc(f"eStargz TOC is not a readable tar: {exc}") from exc


def _check_digest(data: bytes, expected: str, what: str) -> None:
    if not DIGEST.fullmatch(expected):
        raise BadToc(f"{what} digest annotation {expected!r} is not a sha256 digest")
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != expected:
        raise BadToc(f"{what} digest {got} does not match its annotation {expected}")


def parse_toc(raw: bytes, kind: str, codec: str, toc_digest: str, data_end: int) -> TocIndex:
    """Check and convert the TOC JSON (already verified against its digest)."""
    with _gc.paused():  # a burst of long-lived objects: no collections (r8imfs._gc)
        return _parse_toc(raw, kind, codec, toc_digest, data_end)


def _parse_toc(raw: bytes, kind: str, codec: str, toc_digest: str, data_end: int) -> TocIndex:
    if len(raw) > MAX_TOC_BYTES:
        raise BadToc(f"TOC of {len(raw)} bytes is too large")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadToc(f"TOC is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise BadToc("TOC is not a version 1 table of contents")
    raw_entries = doc.get("entries")
    if not isinstance(raw_entries, list) or len(raw_entries) > MAX_ENTRIES:
        raise BadToc(f"TOC entries missing or more than {MAX_ENTRIES}")
    entries, files, total = build_index(raw_entries, data_end, allow_shared=codec == "gzip")
    starts = tuple(f.start for f in files)
    return TocIndex(kind, codec, toc_digest, entries, files, total, data_end, starts)
