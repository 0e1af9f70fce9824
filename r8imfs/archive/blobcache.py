"""Lazy, cached random access to registry blobs over HTTP Range.

Theory of operation
-------------------
A blob is read in aligned blocks (``block_size``, 4 MiB by default; see
docs/engine-measurements.md, "Blob cache"). ``BlobReader.read`` finds the
missing blocks of the range asked for, starts one ranged GET per block in a
background nursery (at most ``parallel`` at a time), and waits. A second
request for a block already on its way waits on that fetch's ``trio.Event``
instead of fetching again. Reads that continue where a recent read ended
(``SequentialDetector``) start GETs for the next ``readahead`` blocks too, so
a sequential consumer (a gzip pass, a tar walk) keeps several ranges in
flight (what stargz #2172 and containerd #10177 learned about big layers).

On disk, per blob, under ``<cache_dir>/blobs/<algorithm>/``:

``<hex>.data``
    A sparse file of the blob's full size; present ranges hold its bytes.
``<hex>.ranges``
    A small JSON ``Record``: present ranges, whether the whole blob was
    verified, and the data file's inode. Written to a temporary file and
    renamed into place, after ``fdatasync`` of the data, so a record never
    claims bytes the data file does not hold. Chosen over SQLite: one pair of
    files per blob makes eviction two ``unlink``s, needs no shared database
    (and its locking) between processes, and the records are a few intervals.
``<hex>.blocks``
    Once the blob verified: the sha256 of each block (``BlockTable``). It
    outlives eviction, so a blob fetched again later is checked block by
    block before anything is served from it (below).

Several processes may share a cache directory. A reader holds a shared
``flock`` on the data file for as long as it is open; eviction takes an
exclusive one without waiting and skips what it cannot lock, so a blob in use
by any process is never evicted. A reader loads the record when it opens,
reloads it when a block is missing and the record changed, and merges its
ranges with the record on disk when it writes (records whose inode is not
the data file's are ignored). A lost update between two writers only loses
ranges, which are fetched again. Blobs are content-addressed and immutable:
nothing is revalidated.

The directory is bounded by ``max_bytes`` (allocated blocks, so holes are
free): when writes push it over, whole blobs go in least-recently-used order
(the newer mtime of data and record; both are touched on open and close)
until it is under the bound again. Open blobs are kept, so the bound can be
exceeded while they alone are larger.

Verification (OCI image-spec descriptor.md, "Digests"): a hash frontier
follows the present prefix of the blob, hashing it from the data file as it
grows; when the last byte arrives the digest is compared before the read that
completed it returns. A mismatch deletes both files, fails every pending and
later read with ``DigestMismatch``, and nothing more is served from that
blob. Ranges served before the blob is complete cannot be verified: that is
inherent to lazy reading. The same pass hashes each block on its own; once the
whole digest checks out those block hashes are kept, and from then on every
block fetched from the network (after an eviction, in another process) must
match its hash before it is stored: a mismatch fails that read with
``DigestMismatch`` and stores nothing. So wrong bytes can only ever be served
from a blob never before downloaded whole on this machine (a plain or
seekable-zstd layer is indexed from its headers alone).

A registry that answers a ranged GET with 200 sends the whole blob (Harbor's
proxy cache, distribution#4667): that response is streamed into the data file,
hashed on the way, and only after it verifies do all blocks become present.
The (registry, digest) pair is remembered, so later fetches of that blob ask
for the whole blob instead of a range, and every read waits for it.

All file I/O of blocks and all hashing go through ``r8imfs._threads.run_io``;
the sync archive engine, in ``run_sync`` threads, reads through
``SyncBlobFile.read_at``, which calls back into the loop.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar, TypeVarTuple, Unpack

import trio

from r8imfs._threads import from_thread, run_io
from r8imfs.archive import _blobfiles as _files
from r8imfs.archive._ranges import (
    BlockHasher,
    Blocks,
    BlockTable,
    RangeSet,
    Record,
    SequentialDetector,
)
from r8imfs.errors import DigestMismatch, R8imfsError, RegistryError, UsageError
from r8imfs.oci import digest as _digest
from r8imfs.oci.reference import Repository

log = logging.getLogger("r8imfs.archive")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

MiB = 1024 * 1024
DEFAULT_BLOCK_SIZE = 4 * MiB
DEFAULT_READAHEAD = 4
DEFAULT_PARALLEL = 8
DEFAULT_MAX_BYTES = 20 * 1024 * MiB
FLUSH_INTERVAL = 2.0  # seconds between record writes while blocks arrive
WRITE_CHUNK = 4 * MiB  # whole-blob streams are written in pieces of this size


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/r8imfs``, else ``~/.cache/r8imfs``."""
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "r8imfs"


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^(\d+(?:\.\d*)?)\s*([KMGT]?)(?:I?B)?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"10G"``, ``"500M"``, ``"64KiB"``, ``"1.5GB"``, ``"4096"``: binary units, in bytes."""
    match = _SIZE.match(text.strip())
    if match is None:
        raise UsageError(f"invalid size {text!r}", hint="a number with K, M, G or T, e.g. 10G")
    return int(float(match[1]) * _UNITS[match[2].upper()])


# -- what the cache needs from a registry client ------------------------------


class BlobStreamLike(Protocol):
    start: int
    status: int
    total: int | None

    def chunks(self) -> AsyncIterator[bytes]: ...


class BlobSource(Protocol):
    """``RegistryClient`` as the cache sees it (tests pass fakes)."""

    def open_blob(
        self, repo: Repository, digest: str, start: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[BlobStreamLike]: ...


@dataclass(slots=True)
class _Fetch:
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None


class BlobCache:
    """The shared, bounded on-disk cache; owns the nursery of background fetches.

    Use as ``async with BlobCache(dir, max_bytes) as cache:``; open readers
    with ``cache.open(...)`` or ``async with cache.reader(...)``. One
    ``BlobReader`` exists per digest per cache: a second ``open`` of the same
    digest shares it (and its client and repository).
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        readahead: int = DEFAULT_READAHEAD,
        parallel: int = DEFAULT_PARALLEL,
    ) -> None:
        self.root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.max_bytes = max_bytes
        self.block_size = block_size
        self.readahead = readahead
        self.parallel = max(1, parallel)
        self.bytes_fetched = 0
        self.requests = 0
        self._readers: dict[str, BlobReader] = {}
        self._no_ranges: set[tuple[str, str]] = set()
        self._usage = 0
        self._evicting = False
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> BlobCache:
        stack = AsyncExitStack()
        self._nursery = await stack.enter_async_context(trio.open_nursery())
        self._stack = stack
        self._usage = await run_io(_files.evict, self.root, self.max_bytes, frozenset())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._stack is not None
        assert self._nursery is not None
        try:
            for reader in list(self._readers.values()):
                await reader._close()
        finally:
            self._nursery.cancel_scope.cancel()
            stack, self._stack, self._nursery = self._stack, None, None
            await stack.aclose()

    def path_of(self, digest: str) -> Path:
        """The data file that caches ``digest``."""
        return _files.Paths.of(self.root, digest).data

    async def open(
        self, client: BlobSource, repo: Repository, digest: str, size: int
    ) -> BlobReader:
        """A reader of ``digest`` (``size`` bytes, from the descriptor); ``aclose`` it."""
        if self._nursery is None:
            raise RuntimeError("BlobCache used outside `async with`")
        while (reader := self._readers.get(digest)) is not None:
            await reader._opened.wait()
            if not reader._closed:
                break
        if reader is None:
            reader = self._readers[digest] = BlobReader(self, client, repo, digest, size)
            await reader._open()
        if reader.size != size:
            raise RegistryError(f"blob {digest} opened with sizes {reader.size} and {size}")
        reader._refs += 1
        return reader

    @asynccontextmanager
    async def reader(
        self, client: BlobSource, repo: Repository, digest: str, size: int
    ) -> AsyncIterator[BlobReader]:
        reader = await self.open(client, repo, digest, size)
        try:
            yield reader
        finally:
            await reader.aclose()

    async def evict(self) -> int:
        """Evict down to ``max_bytes`` now; returns the bytes the cache then holds."""
        keep = frozenset(_files.Paths.of(self.root, d).data.name for d in self._readers)
        self._usage = await run_io(_files.evict, self.root, self.max_bytes, keep)
        return self._usage

    def _note_written(self, n: int) -> None:
        self._usage += n
        if self._usage > self.max_bytes and not self._evicting and self._nursery is not None:
            self._evicting = True
            self._nursery.start_soon(self._evict_in_background)

    async def _evict_in_background(self) -> None:
        try:
            await self.evict()
        finally:
            self._evicting = False

    def background(self) -> trio.Nursery:
        """The cache's nursery, for work that lives as long as the cache (readahead)."""
        return self._background()

    def _background(self) -> trio.Nursery:
        if self._nursery is None:
            raise trio.ClosedResourceError("the blob cache is closed")
        return self._nursery


class BlobReader:
    """Random access to one blob: ``await read(offset, size)``.

    Counters: ``bytes_fetched`` (body bytes received from the network) and
    ``requests`` (GETs sent); the cache sums them over all its readers.
    """

    def __init__(
        self, cache: BlobCache, client: BlobSource, repo: Repository, digest: str, size: int
    ) -> None:
        self.cache = cache
        self.client = client
        self.repo = repo
        self.digest = digest
        self.size = size
        self.bytes_fetched = 0
        self.requests = 0
        self._paths = _files.Paths.of(cache.root, digest)
        self._blocks = Blocks(size, cache.block_size)
        self._present = RangeSet()
        self._verified = False
        self._failed: DigestMismatch | None = None
        self._inflight: dict[int, _Fetch] = {}
        self._whole: _Fetch | None = None
        self._detector = SequentialDetector()
        self._hasher = _digest.Hasher(_files.algorithm(digest))
        self._block_hasher = BlockHasher(cache.block_size)
        self._table: BlockTable | None = None  # known block hashes: fetches are checked
        self._hash_pos = 0
        self._hash_lock = trio.Lock()
        self._record_lock = trio.Lock()
        self._record_mtime = 0
        self._changes = 0  # bumped on every change the record should learn of
        self._recorded = 0  # the value of _changes the record on disk reflects
        self._last_flush = 0.0
        self._housekeeping = False
        self._fd = -1
        self._ino = 0
        self._users = 0  # tasks with the fd in a thread right now
        self._idle = trio.Event()
        self._refs = 0
        self._closed = False
        self._opened = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._stopping = trio.Event()
        self._stopped = trio.Event()

    # -- public ----------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self._present.covers(0, self.size)

    @property
    def verified(self) -> bool:
        return self._verified

    async def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset``; fewer only at the end of the blob."""
        end = min(offset + size, self.size)
        if offset < 0 or size < 0:
            raise ValueError(f"negative offset or size ({offset}, {size})")
        self._check_usable()
        if offset >= end:
            return b""
        if self._detector.observe(offset, end):
            self._read_ahead(end)
        await self._ensure(offset, end)
        if not self._verified and self.complete:
            await self._advance_hash()
        data = await self._io(_files.pread, end - offset, offset)
        self._check_usable()
        return data

    def sync_file(self) -> SyncBlobFile:
        """A ``ReadAt`` over this reader for code running in ``run_sync`` threads."""
        return SyncBlobFile(self)

    async def aclose(self) -> None:
        self._refs -= 1
        if self._refs <= 0:
            await self._close()

    async def __aenter__(self) -> BlobReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- opening and closing ----------------------------------------------------
    async def _open(self) -> None:
        try:
            await self._open_files()
            self._table = await run_io(
                _files.load_table, self._paths.blocks, self.digest, self.size, self.cache.block_size
            )
            if self.complete and not self._verified:
                await self._check_complete_copy()
            self._record_mtime = await run_io(_files.touch, self._paths.record)
            self._nursery = await self.cache._background().start(self._serve)
        except BaseException:
            await self._close()
            raise
        finally:
            self._opened.set()

    async def _check_complete_copy(self) -> None:
        """Verify a copy completed by others; a damaged one is dropped and refetched."""
        blocks = BlockHasher(self.cache.block_size)
        if await self._io(_files.file_matches, self.size, self.digest, blocks):
            self._verified = True
            await self._learn_blocks(blocks)
        elif self.size == 0:
            await self._fail(f"an empty blob does not hash to {self.digest}")
        else:
            await run_io(_files.delete, self._paths, self._ino)
            os.close(self._fd)
            self._fd = -1
            self._present = RangeSet()
            await self._open_files()

    async def _open_files(self) -> None:
        self._fd, self._ino, record = await run_io(
            _files.open_data, self.cache.root, self._paths, self.size
        )
        if record is not None and self._usable(record):
            self._present = record.rangeset()
            self._verified = record.verified and self.complete

    def _usable(self, record: Record) -> bool:
        return (record.ino, record.size, record.digest) == (self._ino, self.size, self.digest)

    async def _serve(self, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        """Hosts this reader's fetches in the cache's nursery until ``_close``."""
        try:
            async with trio.open_nursery() as nursery:
                task_status.started(nursery)
                await self._stopping.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._stopped.set()

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.cache._readers.get(self.digest) is self:
            del self.cache._readers[self.digest]
        # Shielded: the fd must outlive every thread still using it.
        with trio.CancelScope(shield=True):
            try:
                if self._nursery is not None:
                    self._stopping.set()
                    await self._stopped.wait()
                while self._users:
                    await self._idle.wait()
                if self._fd >= 0 and self._failed is None:
                    await self._flush()
            finally:
                if self._fd >= 0:
                    os.close(self._fd)  # also drops the shared flock
                    self._fd = -1

    async def _io(self, fn: Callable[[int, Unpack[Ts]], T], *args: *Ts) -> T:
        """``fn(fd, *args)`` in a run_io thread; ``_close`` waits for it."""
        if self._fd < 0:
            raise trio.ClosedResourceError(f"reader of blob {self.digest} is closed")
        self._users += 1
        try:
            return await run_io(fn, self._fd, *args)
        finally:
            self._users -= 1
            if not self._users:
                self._idle.set()
                self._idle = trio.Event()

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise copy.copy(self._failed)
        if self._closed:
            raise trio.ClosedResourceError(f"reader of blob {self.digest} is closed")

    # -- finding and fetching blocks --------------------------------------------
    async def _ensure(self, start: int, end: int) -> None:
        """Return once ``[start, end)`` is present (or raise why it cannot be)."""
        reloaded = False
        while True:
            self._check_usable()
            if self._whole is not None:
                await _wait(self._whole)
                continue
            gaps = self._present.missing(start, end)
            if not gaps:
                return
            if not reloaded:  # another process may have fetched them meanwhile
                reloaded = True
                await self._reload_record()
                continue  # that awaited: look again
            wanted = [b for s, e in gaps for b in self._blocks.covering(s, e)]
            pending = [self._fetch(b) for b in dict.fromkeys(wanted[: self.cache.parallel])]
            await _wait(pending[0])

    def _read_ahead(self, pos: int) -> None:
        if self._whole is not None or self.cache.readahead <= 0:
            return
        for b in self._blocks.ahead(pos, self.cache.readahead):
            if not self._present.covers(*self._blocks.span(b)):
                self._fetch(b)

    def _fetch(self, block: int) -> _Fetch:
        fetch = self._inflight.get(block)
        if fetch is None:
            assert self._nursery is not None
            fetch = self._inflight[block] = _Fetch()
            self._nursery.start_soon(self._fetch_block, block, fetch)
        return fetch

    async def _fetch_block(self, block: int, fetch: _Fetch) -> None:
        try:
            if (self.repo.registry, self.digest) in self.cache._no_ranges:
                await self._fetch_whole(None)
                return
            start, end = self._blocks.span(block)
            data = await self._fetch_range(start, end)
            if data is None:
                return
            try:
                await self._check_block(block, data)
            except DigestMismatch as exc:  # a bad proxy or CDN node, usually: once more
                log.info("%s; fetching them again", exc)
                data = await self._fetch_range(start, end)
                if data is None:
                    return
                await self._check_block(block, data)
            await self._store(start, data)
        except (R8imfsError, OSError, trio.ClosedResourceError) as exc:
            # (closed: the reader went away while this fetch was finishing;
            # whoever still waits on it hears so, nothing escapes the nursery)
            fetch.error = exc
        finally:
            if self._inflight.get(block) is fetch:
                del self._inflight[block]
            fetch.done.set()

    async def _fetch_range(self, start: int, end: int) -> bytearray | None:
        """``[start, end)`` of the blob; None when the registry sent it whole instead."""
        self._count_request()
        async with self.client.open_blob(self.repo, self.digest, start, end) as stream:
            if stream.status == 200 or stream.start != start:
                self.cache._no_ranges.add((self.repo.registry, self.digest))
                await self._fetch_whole(stream)
                return None
            return await self._collect(stream, end - start)

    async def _collect(self, stream: BlobStreamLike, length: int) -> bytearray:
        buf = bytearray()
        async for chunk in stream.chunks():
            self._count_bytes(len(chunk))
            buf += chunk
            if len(buf) > length:
                raise RegistryError(f"{self.repo.registry} sent more than asked of {self.digest}")
        if len(buf) != length:
            raise RegistryError(
                f"{self.repo.registry} sent {len(buf)} of {length} bytes asked of {self.digest}"
            )
        return buf

    async def _check_block(self, block: int, data: bytearray) -> None:
        """A fetched block of a blob verified before must hash as it did then."""
        if self._table is None:
            return
        got = await run_io(_files.sha256_hex, data)
        if got != self._table.expected(block):
            start, end = self._blocks.span(block)
            raise DigestMismatch(
                f"blob {self.digest} is corrupt ({self.repo.registry} served bytes"
                f" {start}-{end - 1} unlike the copy verified before; refusing them)"
            )

    async def _store(self, start: int, data: bytearray) -> None:
        self._check_usable()
        await self._io(_files.pwrite, data, start)
        if self._failed is not None:
            return
        self.cache._note_written(self._present.add(start, start + len(data)))
        self._changes += 1
        self._kick_housekeeping()

    def _count_request(self) -> None:
        self.requests += 1
        self.cache.requests += 1

    def _count_bytes(self, n: int) -> None:
        self.bytes_fetched += n
        self.cache.bytes_fetched += n

    # -- the whole blob in one GET (registries that ignore Range) ---------------
    async def _fetch_whole(self, stream: BlobStreamLike | None) -> None:
        """Stream the whole blob in; ``stream`` is a 200 answer already open."""
        if self._whole is not None:
            return  # another task is at it; our waiters wait for that one
        whole = self._whole = _Fetch()
        try:
            if stream is None:
                self._count_request()
                async with self.client.open_blob(self.repo, self.digest) as fresh:
                    await self._stream_whole(fresh)
            else:
                await self._stream_whole(stream)
        except BaseException as exc:
            whole.error = exc if isinstance(exc, R8imfsError | OSError) else None
            raise
        finally:
            self._whole = None
            whole.done.set()

    async def _stream_whole(self, stream: BlobStreamLike) -> None:
        hasher = _digest.Hasher(_files.algorithm(self.digest))
        blocks = BlockHasher(self.cache.block_size)
        pos = 0
        buf = bytearray()
        async for chunk in stream.chunks():
            self._count_bytes(len(chunk))
            buf += chunk
            if pos + len(buf) > self.size:
                await self._fail(f"blob {self.digest} is longer than its {self.size} bytes")
            if len(buf) >= WRITE_CHUNK:
                piece, buf = buf, bytearray()
                await self._io(_files.pwrite_hash, piece, pos, hasher, blocks)
                pos += len(piece)
        await self._io(_files.pwrite_hash, buf, pos, hasher, blocks)
        pos += len(buf)
        if pos != self.size:
            raise RegistryError(
                f"{self.repo.registry} sent {pos} of the {self.size} bytes of {self.digest}"
            )
        if hasher.digest != self.digest:
            await self._fail(
                f"blob {self.digest} is corrupt (downloaded whole, it hashes to {hasher.digest})"
            )
        self.cache._note_written(self.size - self._present.covered())
        self._present = RangeSet([(0, self.size)])
        self._verified = True
        self._changes += 1
        await self._flush()
        await self._learn_blocks(blocks)

    # -- verification and the record, in the background --------------------------
    def _kick_housekeeping(self) -> None:
        if not self._housekeeping and self._nursery is not None:
            self._housekeeping = True
            self._nursery.start_soon(self._housekeep)

    async def _housekeep(self) -> None:
        """Advance the hash frontier and write the record when due, off the read path."""
        try:
            await self._advance_hash()
            due = trio.current_time() - self._last_flush >= FLUSH_INTERVAL
            if self._changes != self._recorded and (due or self._verified):
                await self._flush()
        except (R8imfsError, OSError):
            pass  # a mismatch is in self._failed: every read raises it
        finally:
            self._housekeeping = False

    async def _advance_hash(self) -> None:
        """Hash the present prefix past the frontier; at the end, compare digests."""
        async with self._hash_lock:
            while not self._verified and self._failed is None:
                end = self._present.contiguous_end(self._hash_pos)
                if end == self._hash_pos:
                    break
                blocks = self._block_hasher if self._table is None else None
                await self._io(_files.hash_file, self._hash_pos, end, self._hasher, blocks)
                self._hash_pos = end
            if self._verified or self._failed is not None or self._hash_pos < self.size:
                return
            if self._hasher.digest != self.digest:
                await self._fail(
                    f"blob {self.digest} is corrupt (it hashes to {self._hasher.digest})"
                )
            self._verified = True
            self._changes += 1
            await self._learn_blocks(self._block_hasher)

    async def _learn_blocks(self, blocks: BlockHasher) -> None:
        """Keep the block hashes of a blob that just verified (once per blob)."""
        if self._table is not None:
            return
        table = BlockTable(self.digest, self.size, self.cache.block_size, blocks.hashes())
        self._table = table
        with trio.CancelScope(shield=True):
            await run_io(_files.write_table, self._paths.blocks, table)

    async def _fail(self, message: str) -> None:
        """Forget the blob's bytes, delete its files, and refuse it from now on."""
        self._failed = DigestMismatch(message)
        self._present = RangeSet()
        self._verified = False
        with trio.CancelScope(shield=True):
            await run_io(_files.delete, self._paths, self._ino)
        raise copy.copy(self._failed)

    # -- the record ----------------------------------------------------------------
    async def _flush(self) -> None:
        """Write the record (merged with what other processes recorded)."""
        async with self._record_lock:
            if self._changes == self._recorded or self._failed is not None:
                await run_io(_files.touch, self._paths.record)
                return
            changes = self._changes
            mine = Record(self.digest, self.size, self._ino, tuple(self._present), self._verified)
            merged, self._record_mtime = await self._io(_files.write_record, self._paths, mine)
            self._recorded = changes
            self._last_flush = trio.current_time()
            self._merge(merged)

    async def _reload_record(self) -> None:
        """Take the ranges another process recorded since we last looked."""
        record, mtime = await run_io(_files.load_if_changed, self._paths.record, self._record_mtime)
        self._record_mtime = mtime
        if record is not None:
            self._merge(record)

    def _merge(self, record: Record) -> None:
        if self._usable(record) and self._failed is None:
            self._present.update(record.rangeset())
            self._verified = self._verified or (record.verified and self.complete)


class SyncBlobFile:
    """``ReadAt`` (r8imfs.archive.readat) over a ``BlobReader``, for engine threads.

    ``read_at`` must be called from a ``r8imfs._threads.run_sync`` thread:
    it runs ``reader.read`` on the trio loop and blocks until it is done.
    Safe to call from several threads at once.
    """

    def __init__(self, reader: BlobReader) -> None:
        self._reader = reader

    @property
    def size(self) -> int:
        return self._reader.size

    def read_at(self, offset: int, size: int) -> bytes:
        return from_thread(self._reader.read, offset, size)


async def _wait(fetch: _Fetch) -> None:
    await fetch.done.wait()
    if fetch.error is not None:
        raise copy.copy(fetch.error) from fetch.error
