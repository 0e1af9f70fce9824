"""One blob's reader in the blob cache: fetches, the data file, readahead.

``BlobReader.read`` finds the missing blocks of the range asked for, starts one
ranged GET per block in the reader's nursery (which lives in the cache's) and
waits; see ``blobcache`` for the theory of operation. The reader owns the data
file (its fd, and the threads using it) and the fetches; whether the bytes are
the blob is its ``Verifier``'s business (``_verifier``), the record on disk its
``RecordFile``'s (``_record``). What it needs of the cache is ``BlobCache``'s
public surface.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar, TypeVarTuple, Unpack

import trio

from r8imfs._buffers import scratch
from r8imfs._threads import from_thread, run_cpu, run_io
from r8imfs.cache import _blobfiles as _files
from r8imfs.cache._ranges import BlockHasher, Blocks, RangeSet, Record, SequentialDetector
from r8imfs.cache._record import RecordFile
from r8imfs.cache._verifier import Verifier
from r8imfs.errors import DigestMismatch, R8imfsError, RegistryError
from r8imfs.oci import digest as _digest
from r8imfs.oci.reference import Repository

if TYPE_CHECKING:
    from r8imfs.cache.blobcache import BlobCache

log = logging.getLogger("r8imfs.cache")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

WRITE_CHUNK = 4 * 1024 * 1024  # whole-blob streams are written in pieces of this size
#: bytes ``fetch_range`` keeps in memory until the hash frontier passes them
FRESH_LIMIT = 16 * 1024 * 1024
#: bytes ``fetch_range`` may leave to background writes before it waits for them
STORE_BEHIND = 16 * 1024 * 1024


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


class BlobReader:
    """Random access to one blob: ``await read(offset, size)``.

    Counters: ``bytes_fetched`` (body bytes received from the network) and
    ``requests`` (GETs sent); the cache sums them over all its readers. The
    reader owns the data file and the fetches; whether the bytes are right is
    its ``Verifier``'s business, the record on disk its ``RecordFile``'s.
    """

    def __init__(
        self,
        cache: BlobCache,
        client: BlobSource,
        repo: Repository,
        digest: str,
        size: int,
        block_size: int | None = None,
    ) -> None:
        self.cache = cache
        #: fetch granularity; smaller for layers read span by span (SOCI), so a
        #: small file costs little more than its span
        self.block_size = block_size or cache.block_size
        #: readahead in blocks, the same bytes ahead whatever the block size
        self._readahead = cache.readahead * cache.block_size // self.block_size
        self.client = client
        self.repo = repo
        self.digest = digest
        self.size = size
        self.bytes_fetched = 0
        self.requests = 0
        self._paths = _files.Paths.of(cache.root, digest)
        self._blocks = Blocks(size, self.block_size)
        self._present = RangeSet()
        self._verifier = Verifier(digest, size, self.block_size, self._paths.blocks)
        self._record = RecordFile(self._paths)
        self._inflight: dict[int, _Fetch] = {}
        self._whole: _Fetch | None = None
        self._detector = SequentialDetector()
        #: ``fetch_range``'s bytes by start, oldest first, kept until hashed (``_hash_range``)
        self._fresh: dict[int, bytearray] = {}
        self._fresh_bytes = 0
        self._storing = 0  # bytes fetched by fetch_range not yet written
        self._housekeeping = False
        self._housekeep_again = False
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
        return self._verifier.verified

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
        if not self.verified and self.complete:
            await self._advance_hash()
        data = await self._io(_files.pread, end - offset, offset)
        self._check_usable()
        return data

    async def fetch_range(self, start: int, end: int, *, keep: bool = True) -> bytes | bytearray:
        """Exactly ``[start, end)`` of the blob, answered from the GET's own bytes.

        For ``image.fetchplan.UnitReader``, which asks for whole units
        (frames, chunks) and reads ahead itself, and for the sparse hops of a
        plain layer's header walk (``SyncBlobFile.fetch_at``): no block
        alignment and no sequential readahead here. Missing bytes cost one
        GET of exactly the range; they are returned at once, and stored,
        recorded and hashed (the hash frontier) behind the caller
        (``_store_behind``). Served
        from the data file instead when present, when the blob was verified
        before (fetched blocks must then match their recorded hashes, so
        whole blocks are fetched and checked first, as ``read`` does), or
        when the registry ignores ``Range`` (the whole blob is streamed in).

        ``keep=False``: what is fetched is not stored (nor recorded, nor hashed):
        for a bulk sequential read of units that carry their own digests (TOC
        chunks, SOCI spans), where a copy of the blob would cost a disk write
        and two hashes per byte for bytes the reader is taking away anyway.
        """
        end = min(end, self.size)
        self._check_usable()
        if start >= end:
            return b""
        if not self._direct(start, end):
            return await self._read_present(start, end)
        self._count_request()
        async with self.client.open_blob(self.repo, self.digest, start, end) as stream:
            if stream.status == 200 or stream.start != start:
                self.cache.refuse_ranges(self.repo.registry, self.digest)
                await self._fetch_whole(stream)
                return await self._read_present(start, end)
            data = await self._collect(stream, end - start)
        self._check_usable()
        if not keep:
            return data
        assert self._nursery is not None
        if self._storing > STORE_BEHIND:  # the disk lags the network: wait for it
            await self._store_behind(start, data)
        else:
            self._nursery.start_soon(self._store_behind, start, data)
        return data

    def _direct(self, start: int, end: int) -> bool:
        """Whether ``fetch_range`` should GET ``[start, end)`` itself."""
        return not (
            self._present.covers(start, end)
            or self._whole is not None
            or self._verifier.has_table
            or self.cache.ranges_refused(self.repo.registry, self.digest)
        )

    async def _read_present(self, start: int, end: int) -> bytes:
        await self._ensure(start, end)
        if not self.verified and self.complete:
            await self._advance_hash()
        data = await self._io(_files.pread, end - start, start)
        self._check_usable()
        return data

    async def _store_behind(self, start: int, data: bytearray) -> None:
        """``fetch_range``'s bytes into the data file; a failure only costs a refetch."""
        self._keep_fresh(start, data)
        self._storing += len(data)
        try:
            await self._store(start, data)
        except (R8imfsError, OSError, trio.ClosedResourceError) as exc:
            log.debug("could not keep bytes %d+%d of %s: %s", start, len(data), self.digest, exc)
        finally:
            self._storing -= len(data)

    def sync_file(self) -> SyncBlobFile:
        """A ``ReadAt`` over this reader for code running in ``run_sync`` threads."""
        return SyncBlobFile(self)

    async def aclose(self) -> None:
        """Give back one ``open``; the last one closes the reader."""
        self._refs -= 1
        if self._refs <= 0:
            await self.close()

    async def __aenter__(self) -> BlobReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- what the cache calls ---------------------------------------------------
    def retain(self) -> None:
        """One more ``open`` of this reader (``aclose`` gives it back)."""
        self._refs += 1

    async def wait_opened(self) -> bool:
        """Wait for ``start`` to finish; whether the reader is open (not closed)."""
        await self._opened.wait()
        return not self._closed

    async def start(self) -> None:
        """Open the data file, load the record and block table, start serving."""
        try:
            await self._open_files()
            await self._verifier.load_table()
            if self.complete and not self.verified:
                await self._check_complete_copy()
            await self._record.touch()
            self._nursery = await self.cache.background().start(self._serve)
        except BaseException:
            await self.close()
            raise
        finally:
            self._opened.set()

    async def close(self) -> None:
        """Stop the fetches, write the record, close the file (whatever ``open`` counts)."""
        if self._closed:
            return
        self._closed = True
        self.cache.forget(self)
        # Shielded: the fd must outlive every thread still using it.
        with trio.CancelScope(shield=True):
            try:
                if self._nursery is not None:
                    self._stopping.set()
                    await self._stopped.wait()
                while self._users:
                    await self._idle.wait()
                if self._fd >= 0 and self._verifier.failed is None:
                    await self._flush()
            finally:
                if self._fd >= 0:
                    os.close(self._fd)  # also drops the shared flock
                    self._fd = -1

    # -- opening ----------------------------------------------------------------
    async def _check_complete_copy(self) -> None:
        """Verify a copy completed by others; a damaged one is dropped and refetched."""
        blocks = BlockHasher(self.block_size)
        if await self._io(_files.file_matches, self.size, self.digest, blocks):
            self._verifier.verified = True
            await self._verifier.learn_blocks(blocks)
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
            self._verifier.verified = record.verified and self.complete

    def _usable(self, record: Record) -> bool:
        return (record.ino, record.size, record.digest) == (self._ino, self.size, self.digest)

    async def _serve(self, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        """Hosts this reader's fetches in the cache's nursery until ``close``."""
        try:
            async with trio.open_nursery() as nursery:
                task_status.started(nursery)
                await self._stopping.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._stopped.set()

    async def _io(self, fn: Callable[[int, Unpack[Ts]], T], *args: *Ts) -> T:
        """``fn(fd, *args)`` in a run_io thread; ``close`` waits for it."""
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
        self._verifier.check_usable()
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
        if self._whole is not None or self._readahead <= 0:
            return
        for b in self._blocks.ahead(pos, self._readahead):
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
            if self.cache.ranges_refused(self.repo.registry, self.digest):
                await self._fetch_whole(None)
                return
            start, end = self._blocks.span(block)
            data = await self._fetch_range(start, end)
            if data is None:
                return
            check = self._verifier.check_block
            try:
                await check(block, (start, end), data, self.repo.registry)
            except DigestMismatch as exc:  # a bad proxy or CDN node, usually: once more
                log.info("%s; fetching them again", exc)
                data = await self._fetch_range(start, end)
                if data is None:
                    return
                await check(block, (start, end), data, self.repo.registry)
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
                self.cache.refuse_ranges(self.repo.registry, self.digest)
                await self._fetch_whole(stream)
                return None
            return await self._collect(stream, end - start)

    async def _collect(self, stream: BlobStreamLike, length: int) -> bytearray:
        """The body into one buffer of its final size (no reallocations as it grows:
        the daemon's heap keeps buffers under 16 MiB, ``fs.process``); read into it
        in place when the stream can (``BlobStream.fill``). Not zero-filled first:
        it is returned only when the body filled it whole."""
        buf = scratch(length)
        fill = getattr(stream, "fill", None)
        if fill is not None:
            got = await fill(buf, self._count_bytes)
            if got != length:
                raise RegistryError(
                    f"{self.repo.registry} sent {got} of {length} bytes asked of {self.digest}"
                )
            return buf
        view = memoryview(buf)
        got = 0
        async for chunk in stream.chunks():
            self._count_bytes(len(chunk))
            if got + len(chunk) > length:
                raise RegistryError(f"{self.repo.registry} sent more than asked of {self.digest}")
            view[got : got + len(chunk)] = chunk
            got += len(chunk)
        if got != length:
            raise RegistryError(
                f"{self.repo.registry} sent {got} of {length} bytes asked of {self.digest}"
            )
        return buf

    async def _store(self, start: int, data: bytearray) -> None:
        self._check_usable()
        await self._io(_files.pwrite, data, start)
        if self._verifier.failed is not None:
            return
        self.cache.note_written(self._present.add(start, start + len(data)))
        self._record.changed()
        self._kick_housekeeping()

    def _count_request(self) -> None:
        self.requests += 1
        self.cache.count_request()

    def _count_bytes(self, n: int) -> None:
        self.bytes_fetched += n
        self.cache.count_bytes(n)

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
        blocks = BlockHasher(self.block_size)
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
        self.cache.note_written(self.size - self._present.covered())
        self._present = RangeSet([(0, self.size)])
        self._verifier.verified = True
        self._record.changed()
        await self._flush()
        await self._verifier.learn_blocks(blocks)

    # -- verification and the record, in the background --------------------------
    def _kick_housekeeping(self) -> None:
        self._housekeep_again = True  # a running pass may have looked already: once more
        if not self._housekeeping and self._nursery is not None:
            self._housekeeping = True
            self._nursery.start_soon(self._housekeep)

    async def _housekeep(self) -> None:
        """Advance the hash frontier and write the record when due, off the read path."""
        try:
            while self._housekeep_again:
                self._housekeep_again = False
                await self._advance_hash()
                if self._record.dirty and (self._record.due() or self.verified):
                    await self._flush()
        except (R8imfsError, OSError):
            pass  # a mismatch is in the verifier: every read raises it
        finally:
            self._housekeeping = False

    async def _advance_hash(self) -> None:
        was = self.verified
        mismatch = await self._verifier.advance(self._present, self._hash_range)
        if mismatch is not None:
            await self._fail(mismatch)
        if self.verified and not was:
            self._record.changed()

    async def _hash_range(
        self, start: int, end: int, hasher: _digest.Hasher, blocks: BlockHasher | None
    ) -> None:
        """Hash ``[start, end)``: from ``fetch_range``'s bytes still in memory, else the file."""
        pos = start
        while pos < end:
            found = self._fresh_at(pos)
            if found is None:
                stop = min([s for s in self._fresh if pos < s < end] + [end])
                await self._io(_files.hash_file, pos, stop, hasher, blocks)
            else:
                base, data = found
                stop = min(end, base + len(data))
                piece = memoryview(data)[pos - base : stop - base]
                await run_cpu(_files.hash_bytes, piece, hasher, blocks)
            pos = stop
        for base in [b for b, d in self._fresh.items() if b + len(d) <= end]:
            self._fresh_bytes -= len(self._fresh.pop(base))

    def _keep_fresh(self, start: int, data: bytearray) -> None:
        """Keep fetched bytes for the hash frontier (oldest dropped past ``FRESH_LIMIT``)."""
        if self.verified or start in self._fresh or len(data) > FRESH_LIMIT:
            return
        while self._fresh and self._fresh_bytes + len(data) > FRESH_LIMIT:
            self._fresh_bytes -= len(self._fresh.pop(next(iter(self._fresh))))
        self._fresh[start] = data
        self._fresh_bytes += len(data)

    def _fresh_at(self, pos: int) -> tuple[int, bytearray] | None:
        for base, data in self._fresh.items():
            if base <= pos < base + len(data):
                return base, data
        return None

    async def _fail(self, message: str) -> None:
        """Forget the blob's bytes, delete its files, and refuse it from now on."""
        error = self._verifier.fail(message)
        self._present = RangeSet()
        self._fresh.clear()
        self._fresh_bytes = 0
        with trio.CancelScope(shield=True):
            await run_io(_files.delete, self._paths, self._ino)
        raise error

    # -- the record ----------------------------------------------------------------
    async def _flush(self) -> None:
        """Write the record (merged with what other processes recorded)."""
        merged = await self._record.flush(self._mine, self._write_record)
        if merged is not None:
            self._merge(merged)

    def _mine(self) -> Record | None:
        if self._verifier.failed is not None:
            return None
        return Record(self.digest, self.size, self._ino, tuple(self._present), self.verified)

    async def _write_record(self, paths: _files.Paths, mine: Record) -> tuple[Record, int]:
        return await self._io(_files.write_record, paths, mine)

    async def _reload_record(self) -> None:
        """Take the ranges another process recorded since we last looked."""
        record = await self._record.reload()
        if record is not None:
            self._merge(record)

    def _merge(self, record: Record) -> None:
        if self._usable(record) and self._verifier.failed is None:
            self._present.update(record.rangeset())
            self._verifier.verified = self.verified or (record.verified and self.complete)


class SyncBlobFile:
    """``ReadAt`` (r8imfs.engine.readat) over a ``BlobReader``, for engine threads.

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

    def fetch_at(self, offset: int, size: int) -> bytes | bytearray:
        """Exactly ``[offset, offset + size)``: missing, one GET of just that range
        (``BlobReader.fetch_range``: no block rounding, no readahead). For sparse
        readers, such as the header walk of an uncompressed layer
        (``engine.codecs.plain.ExactReadAt``)."""
        return from_thread(self._reader.fetch_range, offset, offset + size)


async def _wait(fetch: _Fetch) -> None:
    await fetch.done.wait()
    if fetch.error is not None:
        raise copy.copy(fetch.error) from fetch.error
