"""Read a layer through its SOCI zTOC: only the spans a read needs, each verified.

``SociLayer`` is a ``LayerReader`` (``pread`` on offsets of the uncompressed
tar) over a ``ReadAt`` of the *compressed* blob. A read maps its range to
spans, and for the spans not cached or already being loaded:

1. fetches their compressed bytes, one ``read_at`` per run of neighbouring
   spans, *in the calling thread* (a ``ReadAt`` over the trio blob cache calls
   back into trio, which only threads trio started may do); span ``i`` is
   ``[cstart, cend)`` from the zTOC, and with ``bits`` the partial byte before
   a checkpoint belongs to both neighbours;
2. on the reader's thread pool, per span: checks the sha256 against
   ``span_digests`` *before* inflating a byte, so a wrong blob or a lying zTOC
   gives ``SpanDigestMismatch``, never wrong bytes; then inflates the whole
   span from its checkpoint (libz through ctypes drops the GIL: the spans of
   one big read inflate on all cores at once);
3. keeps decoded spans in a small LRU (whole spans, as soci-snapshotter's span
   manager does), so sequential small reads decode each span once.

Two readers of the same span share one load. Pool tasks never wait on
anything, so the pool cannot deadlock.

``entries(z)`` turns the zTOC's TOC into ``Entry`` records, so a mount can
serve a layer's tree from the zTOC without reading any of the layer.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from datetime import datetime
from functools import partial

from r8imfs.engine.codecs import ztoc
from r8imfs.engine.codecs.units import SpanDigestMismatch as SpanDigestMismatch
from r8imfs.engine.codecs.units import check_span as check_digest
from r8imfs.engine.codecs.zran import inflate_from
from r8imfs.engine.entry import Entry, Kind, normalise_path
from r8imfs.engine.readat import ReadAt
from r8imfs.errors import CorruptLayer

#: Decoded spans kept per layer (4 MiB each with SOCI's default span size).
CACHE_SPANS = 8


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
        pool: Executor | None = None,
        spans: ztoc.Spans | None = None,
    ) -> None:
        """Validate ``z`` against ``blob`` (``InvalidZtoc``), unless ``spans`` says
        it was: what ``ztoc.validate(z, blob.size, span_size)`` returned. Spans
        verify and inflate on ``pool`` if given (shared by layers, not shut down
        here), else on a pool of ``workers`` threads of the reader's own."""
        self.ztoc = z
        if spans is None:
            spans = ztoc.validate(z, blob.size, span_size)
        elif z.compressed_archive_size != blob.size:
            raise ztoc.InvalidZtoc(
                f"zTOC is for a blob of {z.compressed_archive_size} bytes, not {blob.size}"
            )
        self.spans = spans
        self._blob = blob
        self._name = name
        self._own_pool = pool is None
        self._pool = pool or ThreadPoolExecutor(
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
        futures, mine = self._claim(first, last)
        if mine:
            self._load(mine)
        parts = []
        for i, fut in zip(range(first, last + 1), futures, strict=True):
            data, base = fut.result(), self.spans.ustart[i]
            parts.append(data[max(offset, base) - base : min(end, self.spans.uend[i]) - base])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_at(self, offset: int, size: int) -> bytes:
        return self.pread(offset, size)

    def cached(self, offset: int, size: int) -> bytes | None:
        """``pread``'s answer if every span it needs is decoded already; never blocks."""
        end = min(offset + size, self.size)
        if offset < 0 or offset >= end:
            return b""
        first = ztoc.span_of(self.spans, offset)
        last = ztoc.span_of(self.spans, end - 1)
        parts = []
        with self._lock:
            for i in range(first, last + 1):
                data = self._cache.get(i)
                if data is None:
                    return None
                self._cache.move_to_end(i)
                base = self.spans.ustart[i]
                parts.append(data[max(offset, base) - base : min(end, self.spans.uend[i]) - base])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_file(self, f: ztoc.FileMetadata, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of a regular entry's data from ``offset``."""
        end = min(f.uncompressed_size, offset + size)
        if offset < 0 or offset >= end:
            return b""
        return self.pread(f.uncompressed_offset + offset, end - offset)

    def close(self) -> None:
        if self._own_pool:
            self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._cache.clear()

    def __enter__(self) -> SociLayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- spans ------------------------------------------------------------------

    def _claim(self, first: int, last: int) -> tuple[list[Future[bytes]], list[int]]:
        """A future per span; the spans nobody has or is loading are claimed by us."""
        futures: list[Future[bytes]] = []
        mine: list[int] = []
        with self._lock:
            for i in range(first, last + 1):
                cached = self._cache.get(i)
                fut = self._inflight.get(i)
                if cached is not None:
                    self._cache.move_to_end(i)
                    fut = Future()
                    fut.set_result(cached)
                elif fut is None:
                    fut = self._inflight[i] = Future()
                    mine.append(i)
                futures.append(fut)
        return futures, mine

    def _load(self, mine: list[int]) -> None:
        """Fetch our spans here (one read per run of neighbours), then verify and
        inflate each on the pool. The fetch stays on the calling thread: a
        ``ReadAt`` backed by the trio blob cache may only be called from there."""
        runs: list[list[int]] = []
        for i in mine:
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        for n, run in enumerate(runs):
            try:
                data = self._fetch(run)
            except BaseException as exc:
                for i in [i for later in runs[n:] for i in later]:
                    self._settle(i, None, exc)
                raise
            base = self.spans.cstart[run[0]]
            for i in run:
                piece = data[self.spans.cstart[i] - base : self.spans.cend[i] - base]
                task = self._pool.submit(self._verify_decode, i, piece)
                task.add_done_callback(partial(self._done, i))

    def _done(self, i: int, task: Future[bytes]) -> None:
        if task.cancelled():  # the reader was closed under a read
            self._settle(i, None, CorruptLayer(f"{self._name}: reader closed during a read"))
            return
        exc = task.exception()
        self._settle(i, None if exc else task.result(), exc)

    def _settle(self, i: int, data: bytes | None, exc: BaseException | None) -> None:
        with self._lock:
            fut = self._inflight.pop(i)
            if data is not None:
                self._cache[i] = data
                while len(self._cache) > self._cache_spans:
                    self._cache.popitem(last=False)
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(data)  # type: ignore[arg-type]

    def _fetch(self, run: list[int]) -> memoryview:
        start, end = self.spans.cstart[run[0]], self.spans.cend[run[-1]]
        data = self._blob.read_at(start, end - start)
        with self._lock:
            self.spans_fetched += len(run)
        if len(data) != end - start:
            raise CorruptLayer(
                f"{self._name}: spans {run[0]}-{run[-1]} are cut short ({len(data)} bytes)"
            )
        return memoryview(data)

    def _verify_decode(self, i: int, data: memoryview) -> bytes | bytearray:
        return verify_and_inflate(self.ztoc, self.spans, i, data, self._name)


def check_span(
    z: ztoc.Ztoc, spans: ztoc.Spans, i: int, data: bytes | memoryview, name: str
) -> None:
    """``SpanDigestMismatch`` unless span ``i``'s compressed bytes hash to its digest."""
    where = f"{name}: span {i} (compressed bytes {spans.cstart[i]}-{spans.cend[i]})"
    check_digest(data, z.span_digests[i], where, "its zTOC")


def verify_and_inflate(
    z: ztoc.Ztoc, spans: ztoc.Spans, i: int, data: bytes | memoryview, name: str
) -> bytes | bytearray:
    """Span ``i`` decoded from its compressed bytes, once they hash to its digest.

    Leaf work (hashing, libz): safe on any thread, never calls back into trio.
    """
    check_span(z, spans, i, data, name)
    size = spans.uend[i] - spans.ustart[i]
    if z.compression == ztoc.UNCOMPRESSED:
        return bytes(data)
    cps = spans.checkpoints
    out = inflate_from(cps[i], data, 0, size, end_hint=cps[i + 1] if i + 1 < len(cps) else None)
    if len(out) != size:
        raise CorruptLayer(f"{name}: span {i} inflates to {len(out)} bytes, not {size}")
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
    mtimes: dict[str, float] = {}  # a layer's files mostly share a few times
    for ordinal, f in enumerate(ordered):
        mtime = mtimes.get(f.mod_time)
        if mtime is None:
            mtime = mtimes[f.mod_time] = parse_mod_time(f.mod_time)
        entry = to_entry(f, ordinal, mtime)
        found.pop(entry.path, None)
        found[entry.path] = entry
    return list(found.values())


def to_entry(f: ztoc.FileMetadata, ordinal: int, mtime: float | None = None) -> Entry:
    """``f`` as an ``Entry``; ``mtime``: ``parse_mod_time(f.mod_time)`` if known."""
    kind = _KINDS[f.type]
    return Entry(
        path=normalise_path(f.name),
        kind=kind,
        mode=f.mode & 0o7777,
        uid=f.uid,
        gid=f.gid,
        mtime=parse_mod_time(f.mod_time) if mtime is None else mtime,
        size=f.uncompressed_size if kind is Kind.FILE else 0,
        linkname=normalise_path(f.linkname) if kind is Kind.HARDLINK else f.linkname,
        devmajor=f.devmajor,
        devminor=f.devminor,
        xattrs=_xattrs(f.xattrs) if f.xattrs else {},
        data_offset=f.uncompressed_offset,
        ordinal=ordinal,
    )


def _xattrs(records: tuple[tuple[str, str], ...]) -> dict[str, bytes]:
    """Extended attributes from the PAX records (``SCHILY.xattr.<name>``)."""
    return {
        k[len(_SCHILY) :]: v.encode("utf-8", "surrogateescape")
        for k, v in records
        if k.startswith(_SCHILY)
    }


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
