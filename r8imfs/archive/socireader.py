"""Read a layer through its SOCI zTOC: only the spans a read needs, each verified.

``SociLayer`` is a ``LayerReader`` (``pread`` on offsets of the uncompressed
tar) over a ``ReadAt`` of the *compressed* blob. A read maps its range to
spans; each missing span is one task on the reader's thread pool:

1. fetch the span's compressed bytes (``[start, end)`` from the zTOC; with
   ``bits`` the partial byte before a checkpoint belongs to both neighbours);
2. check their sha256 against ``span_digests`` *before* inflating a byte, so a
   wrong blob or a lying zTOC gives ``SpanDigestMismatch``, never wrong bytes;
3. inflate the whole span from its checkpoint (libz through ctypes, which drops
   the GIL: spans of one big read inflate on all cores at once);
4. keep the decoded span in a small LRU (whole spans, as soci-snapshotter's
   span manager does), so sequential small reads decode each span once.

Two readers of the same span share one task. Span tasks run on the pool and
never wait on each other, so the pool cannot deadlock; ``pread`` itself must
not be called from a pool thread.

``entries(z)`` turns the zTOC's TOC into ``Entry`` records, so a mount can
serve a layer's tree from the zTOC without reading any of the layer.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime

from r8imfs.archive import ztoc
from r8imfs.archive.entry import Entry, Kind, normalise_path
from r8imfs.archive.readat import ReadAt
from r8imfs.archive.zran import inflate_from
from r8imfs.errors import CorruptLayer, DigestMismatch

#: Decoded spans kept per layer (4 MiB each with SOCI's default span size).
CACHE_SPANS = 8


class SpanDigestMismatch(DigestMismatch):
    """A span's compressed bytes do not hash to the zTOC's digest for it."""


class SociLayer:
    """Random access to one layer's uncompressed tar, through a validated zTOC."""

    def __init__(
        self,
        z: ztoc.Ztoc,
        blob: ReadAt,
        *,
        span_size: int | None = None,
        workers: int | None = None,
        cache_spans: int = CACHE_SPANS,
        name: str = "layer",
    ) -> None:
        self.ztoc = z
        self.spans = ztoc.validate(z, blob.size, span_size)
        self._blob = blob
        self._name = name
        self._pool = ThreadPoolExecutor(
            max_workers=workers or max(2, os.cpu_count() or 1), thread_name_prefix="soci-span"
        )
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_spans = max(1, cache_spans)
        self._inflight: dict[int, Future[bytes]] = {}
        self.spans_fetched = 0  # for tests and benchmarks

    @property
    def size(self) -> int:
        return self.ztoc.uncompressed_archive_size

    def pread(self, offset: int, size: int) -> bytes:
        """``size`` bytes of the uncompressed tar at ``offset`` (fewer only at its end)."""
        end = min(offset + size, self.size)
        if offset < 0 or offset >= end:
            return b""
        first = ztoc.span_of(self.spans, offset)
        last = ztoc.span_of(self.spans, end - 1)
        futures = [self._span_future(i) for i in range(first, last + 1)]
        parts = []
        for i, fut in zip(range(first, last + 1), futures, strict=True):
            data, base = fut.result(), self.spans.ustart[i]
            parts.append(data[max(offset, base) - base : min(end, self.spans.uend[i]) - base])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_at(self, offset: int, size: int) -> bytes:
        return self.pread(offset, size)

    def read_file(self, f: ztoc.FileMetadata, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of a regular entry's data from ``offset``."""
        end = min(f.uncompressed_size, offset + size)
        if offset < 0 or offset >= end:
            return b""
        return self.pread(f.uncompressed_offset + offset, end - offset)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._cache.clear()

    def __enter__(self) -> SociLayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- spans ------------------------------------------------------------------

    def _span_future(self, i: int) -> Future[bytes]:
        with self._lock:
            cached = self._cache.get(i)
            if cached is not None:
                self._cache.move_to_end(i)
                done: Future[bytes] = Future()
                done.set_result(cached)
                return done
            fut = self._inflight.get(i)
            if fut is None:
                fut = self._pool.submit(self._load, i)
                self._inflight[i] = fut
            return fut

    def _load(self, i: int) -> bytes:
        try:
            data = self._decode(i, self._fetch(i))
            with self._lock:
                self._cache[i] = data
                while len(self._cache) > self._cache_spans:
                    self._cache.popitem(last=False)
            return data
        finally:
            with self._lock:
                self._inflight.pop(i, None)

    def _fetch(self, i: int) -> bytes:
        start, end = self.spans.cstart[i], self.spans.cend[i]
        data = self._blob.read_at(start, end - start)
        with self._lock:
            self.spans_fetched += 1
        if len(data) != end - start:
            raise CorruptLayer(f"{self._name}: span {i} is cut short ({len(data)} bytes)")
        want = self.ztoc.span_digests[i]
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        if got != want:
            raise SpanDigestMismatch(
                f"{self._name}: span {i} (compressed bytes {start}-{end}) hashes to {got}, "
                f"its zTOC says {want}"
            )
        return data

    def _decode(self, i: int, data: bytes) -> bytes:
        want = self.spans.uend[i] - self.spans.ustart[i]
        if self.ztoc.compression == ztoc.UNCOMPRESSED:
            return data
        out = inflate_from(self.spans.checkpoints[i], data, 0, want)
        if len(out) != want:
            raise CorruptLayer(f"{self._name}: span {i} inflates to {len(out)} bytes, not {want}")
        return out


# -- the TOC as entries -------------------------------------------------------------

_KINDS = {
    "reg": Kind.FILE,
    "dir": Kind.DIR,
    "symlink": Kind.SYMLINK,
    "hardlink": Kind.HARDLINK,
    "char": Kind.CHARDEV,
    "block": Kind.BLOCKDEV,
    "fifo": Kind.FIFO,
}
_SCHILY = "SCHILY.xattr."


def entries(z: ztoc.Ztoc) -> list[Entry]:
    """The layer's members as ``Entry`` records, in tar order; later duplicates win."""
    found: dict[str, Entry] = {}
    ordered = sorted(z.files, key=lambda f: f.uncompressed_offset)
    for ordinal, f in enumerate(ordered):
        entry = to_entry(f, ordinal)
        found.pop(entry.path, None)
        found[entry.path] = entry
    return list(found.values())


def to_entry(f: ztoc.FileMetadata, ordinal: int) -> Entry:
    kind = _KINDS[f.type]
    hardlink = kind is Kind.HARDLINK
    return Entry(
        path=normalise_path(f.name),
        kind=kind,
        mode=f.mode & 0o7777,
        uid=f.uid,
        gid=f.gid,
        mtime=parse_mod_time(f.mod_time),
        size=f.uncompressed_size if kind is Kind.FILE else 0,
        linkname=normalise_path(f.linkname) if hardlink else f.linkname,
        devmajor=f.devmajor,
        devminor=f.devminor,
        xattrs={
            k[len(_SCHILY) :]: v.encode("utf-8", "surrogateescape")
            for k, v in f.xattrs
            if k.startswith(_SCHILY)
        },
        data_offset=f.uncompressed_offset,
        ordinal=ordinal,
    )


def parse_mod_time(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 ``mod_time``; 0.0 if it does not parse
    (Go's reader also ignores a bad one)."""
    if not text:
        return 0.0
    head, dot, rest = text.partition(".")
    frac = ""
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        frac, rest = rest[:digits], rest[digits:]
        head += rest
    try:
        when = datetime.fromisoformat(head.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return when.timestamp() + (int(frac[:9]) / 10 ** len(frac[:9]) if frac else 0.0)
