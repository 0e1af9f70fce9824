"""The per-layer index cache: build once, keep in SQLite, load in milliseconds.

A layer's index (its tar entries plus gzip checkpoints or a zstd frame table,
and for gzip the sha256 of each span between checkpoints) costs one full
decompression to build, so it is cached by blob digest in
``<cache_dir>/index/<algorithm>/<hex>.sqlite`` with the DDL in ``schema.sql``.
Files are built under a temporary name and renamed into place, never changed
afterwards, and opened read-only and ``immutable`` (no locking). Anything that
does not load cleanly (garbage, truncation, another ``FORMAT_VERSION``, another
digest) is rebuilt and replaced.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any, cast

from r8imfs.engine.codecs.decompress import READ
from r8imfs.engine.codecs.table import CODECS, Codec, Compression, codec_for
from r8imfs.engine.codecs.units import SpanDigest
from r8imfs.engine.decodedcopy import DecodedReader, Pending, build_decoded, decoded_path
from r8imfs.engine.entry import Entry, Kind
from r8imfs.engine.readat import BlobFile, LayerReader, ReadAt, ScanProgress
from r8imfs.errors import CorruptLayer
from r8imfs.oci.digest import validate

FORMAT_VERSION = 2
_KINDS = {k.value: k for k in Kind}
_COLUMNS = (
    "ordinal, path, kind, mode, uid, gid, mtime, size, linkname, "
    "devmajor, devminor, data_offset, xattrs, sparse"
)


@dataclass(frozen=True, slots=True)
class LayerIndex:
    """Everything needed to list and read one layer without re-scanning it."""

    digest: str
    media_type: str
    compression: Compression
    compressed_size: int
    uncompressed_size: int
    entries: tuple[Entry, ...]  # tar order, duplicates resolved
    #: zran index (gzip) or frame table (zstd); b"" for a plain layer, or for
    #: a gzip or zstd layer read from its decoded copy (``decodedcopy``)
    checkpoints: bytes
    readat: ReadAt | None = field(default=None, compare=False, repr=False)
    decoded: Path | None = field(default=None, compare=False, repr=False)
    #: sha256 of each unit the checkpoints cut (``units.span_units``), taken by the
    #: indexing pass over the whole verified blob; () when it took none (zstd, plain,
    #: a decoded copy, a gzip stream indexed_gzip had to index)
    span_digests: tuple[SpanDigest, ...] = field(default=(), repr=False)

    @property
    def codec(self) -> Codec:
        return CODECS[self.compression]

    def by_path(self) -> dict[str, Entry]:
        return {e.path: e for e in self.entries}

    def open_reader(self, readat: ReadAt | None = None) -> LayerReader:
        """A ``pread`` reader over the uncompressed tar; close it when done."""
        source = readat if readat is not None else self.readat
        if source is None:
            raise ValueError("open_reader needs the layer's ReadAt")
        if self.codec.decoded_copy and not self.checkpoints:
            if self.decoded is None:
                raise ValueError(f"a {self.compression} index without checkpoints needs its copy")
            return DecodedReader(self.decoded, self.uncompressed_size)
        return self.codec.open_reader(
            source, self.checkpoints, self.compressed_size, self.uncompressed_size
        )


def index_path(cache_dir: str | os.PathLike[str], digest: str) -> Path:
    algorithm, hexdigest = validate(digest).split(":", 1)
    return Path(cache_dir) / "index" / algorithm / f"{hexdigest}.sqlite"


def load_or_build(
    cache_dir: str | os.PathLike[str],
    digest: str,
    media_type: str,
    readat: ReadAt,
    size: int,
    *,
    progress: ScanProgress | None = None,
    keep_decoded: bool = False,
) -> LayerIndex:
    """The cached index of a layer, building (and caching) it if needed.

    ``keep_decoded``: a layer indexed now by decoding all of it (gzip, zstd
    without a seek table) keeps its decoded copy (``decodedcopy``) instead
    of checkpoints.
    """
    cached = load_cached(cache_dir, digest, media_type, size)
    if cached is not None:
        return _with_readat(cached, readat, media_type, cached.decoded)
    if keep_decoded and needs_full_pass(media_type, readat, size):
        blob = BlobFile(readat, size=size, progress=progress, buffer_size=READ)
        index, pending = build_decoded_index(
            cache_dir, digest, media_type, size, cast(IO[bytes], blob)
        )
        pending.publish()
        index = _with_readat(index, readat, media_type, index.decoded)
    else:
        index = build_index(digest, media_type, readat, size, progress=progress)
    write(index_path(cache_dir, digest), index)
    return index


def needs_full_pass(media_type: str, readat: ReadAt, size: int) -> bool:
    """Whether indexing the layer decodes all of it (so a decoded copy is worth keeping).

    gzip: always. zstd: unless the blob ends with a seek table (one small
    read of its tail). Plain tar: never. (``Codec.needs_full_pass``.)
    """
    return codec_for(media_type).needs_full_pass(readat, size)


def load_cached(
    cache_dir: str | os.PathLike[str], digest: str, media_type: str, size: int
) -> LayerIndex | None:
    """The cached index of a layer if it is there and usable (no ``readat`` yet).

    An index that relies on a decoded copy no longer there is not usable.
    """
    codec = codec_for(media_type)
    cached = load(index_path(cache_dir, digest), digest)
    if cached is None or cached.compression != codec.compression or cached.compressed_size != size:
        return None
    copy = decoded_path(cache_dir, digest)
    if codec.decoded_copy and not cached.checkpoints:
        if not copy.is_file():
            return None
        return _with_decoded(cached, copy)
    return cached


def build_decoded_index(
    cache_dir: str | os.PathLike[str], digest: str, media_type: str, size: int, raw: IO[bytes]
) -> tuple[LayerIndex, Pending]:
    """Index a gzip or zstd layer read once from ``raw``; its decoded copy still to publish.

    The index is not stored: write it once the copy is published (an index
    whose copy is missing is rebuilt anyway).
    """
    copy = decoded_path(cache_dir, digest)
    codec = codec_for(media_type)
    entries, usize, pending = build_decoded(raw, digest, copy, codec)
    index = LayerIndex(
        digest, media_type, codec.compression, size, usize, tuple(entries), b"", None, copy
    )
    return index, pending


def _with_decoded(index: LayerIndex, decoded: Path) -> LayerIndex:
    return dataclasses.replace(index, decoded=decoded)


def build_index(
    digest: str,
    media_type: str,
    readat: ReadAt,
    size: int,
    *,
    progress: ScanProgress | None = None,
) -> LayerIndex:
    """Scan a layer blob (no caching)."""
    codec = codec_for(media_type)
    built = codec.build_index(readat, size, progress=progress)
    return LayerIndex(
        digest,
        media_type,
        codec.compression,
        size,
        built.uncompressed_size,
        tuple(built.entries),
        built.checkpoints,
        readat,
        span_digests=tuple(built.span_digests),
    )


def _with_readat(
    index: LayerIndex, readat: ReadAt, media_type: str, decoded: Path | None = None
) -> LayerIndex:
    return dataclasses.replace(index, media_type=media_type, readat=readat, decoded=decoded)


# --- reading ---------------------------------------------------------------


def load(path: Path, digest: str) -> LayerIndex | None:
    """The index stored at ``path``, or None if absent, stale or damaged."""
    if not path.is_file():
        return None
    try:
        with _connect_ro(path) as db:
            return _load(db, digest)
    except (sqlite3.Error, ValueError, KeyError, TypeError, CorruptLayer):
        return None


@contextlib.contextmanager
def _connect_ro(path: Path) -> Iterator[sqlite3.Connection]:
    uri = path.resolve().as_uri() + "?mode=ro&immutable=1"
    db = sqlite3.connect(uri, uri=True)
    try:
        yield db
    finally:
        db.close()


def _load(db: sqlite3.Connection, digest: str) -> LayerIndex | None:
    if db.execute("PRAGMA user_version").fetchone()[0] != FORMAT_VERSION:
        return None
    meta = db.execute(
        "SELECT digest, media_type, compression, compressed_size, uncompressed_size,"
        " entry_count, format_version FROM meta"
    ).fetchall()
    if len(meta) != 1 or meta[0][0] != digest or meta[0][6] != FORMAT_VERSION:
        return None
    _, media_type, stored, csize, usize, count, _ = meta[0]
    compression = Compression(stored)
    entries = _load_entries(db)
    if len(entries) != count:
        return None
    checkpoints = dict(db.execute("SELECT kind, data FROM checkpoints").fetchall())
    blob = checkpoints.get(compression, b"")  # none: read from its decoded copy
    spans = tuple(
        SpanDigest(cstart, cend, digest)
        for cstart, cend, digest in db.execute(
            "SELECT cstart, cend, digest FROM span_digests ORDER BY ordinal"
        )
    )
    return LayerIndex(
        digest, media_type, compression, csize, usize, entries, bytes(blob), span_digests=spans
    )


def _load_entries(db: sqlite3.Connection) -> tuple[Entry, ...]:
    rows = db.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY ordinal")
    return tuple(map(_entry_from_row, rows))


def _entry_from_row(row: tuple[Any, ...]) -> Entry:
    ordinal, path, kind, mode, uid, gid, mtime, size, link, major, minor, offset, xat, sp = row
    return Entry(
        path=path.decode("utf-8", "surrogateescape"),
        kind=_KINDS[kind],
        mode=mode,
        uid=uid,
        gid=gid,
        mtime=mtime,
        size=size,
        linkname=link.decode("utf-8", "surrogateescape"),
        devmajor=major,
        devminor=minor,
        xattrs=_xattrs_from_json(xat) if xat else {},
        data_offset=offset,
        ordinal=ordinal,
        sparse=tuple((o, n) for o, n in json.loads(sp)) if sp else (),
    )


def _xattrs_from_json(text: str) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in json.loads(text).items()}


# --- writing ---------------------------------------------------------------


def write(path: Path, index: LayerIndex) -> None:
    """Store ``index`` at ``path`` atomically (temp file + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:16]}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        db = sqlite3.connect(tmp)
        try:
            _fill(db, index)
        finally:
            db.close()
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fill(db: sqlite3.Connection, index: LayerIndex) -> None:
    db.execute("PRAGMA journal_mode = OFF")
    db.execute("PRAGMA synchronous = OFF")
    db.executescript(schema_sql())
    db.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
    db.execute(
        "INSERT INTO meta VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            index.digest,
            index.media_type,
            index.compression,
            index.compressed_size,
            index.uncompressed_size,
            len(index.entries),
            FORMAT_VERSION,
            time.time(),
        ),
    )
    db.executemany(
        f"INSERT INTO entries ({_COLUMNS}) VALUES ({', '.join('?' * 14)})",
        (_row(e) for e in index.entries),
    )
    if index.checkpoints:
        db.execute("INSERT INTO checkpoints VALUES (?, ?)", (index.compression, index.checkpoints))
        db.executemany(
            "INSERT INTO span_digests VALUES (?, ?, ?, ?)",
            ((i, d.cstart, d.cend, d.digest) for i, d in enumerate(index.span_digests)),
        )
    db.commit()


def _row(e: Entry) -> tuple[object, ...]:
    return (
        e.ordinal,
        e.path.encode("utf-8", "surrogateescape"),
        e.kind.value,
        e.mode,
        e.uid,
        e.gid,
        e.mtime,
        e.size,
        e.linkname.encode("utf-8", "surrogateescape"),
        e.devmajor,
        e.devminor,
        e.data_offset,
        json.dumps({k: base64.b64encode(v).decode() for k, v in e.xattrs.items()})
        if e.xattrs
        else None,
        json.dumps(e.sparse) if e.sparse else None,
    )


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def schema_sql() -> str:
    return resources.files("r8imfs.engine").joinpath("schema.sql").read_text("utf-8")
