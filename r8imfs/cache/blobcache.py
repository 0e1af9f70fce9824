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
the sync engine (``r8imfs.engine``), in ``run_sync`` threads, reads through
``SyncBlobFile.read_at``, which calls back into the loop.

The pieces: ``BlobCache`` (here: the directory, its bound, the nursery, one
reader per digest); ``BlobReader`` (``reader``: one blob's fetches and data
file); its ``Verifier`` (``_verifier``: the hash frontier and block table)
and ``RecordFile`` (``_record``: the ``.ranges`` record and when to write
it); ``_blobfiles`` (the blocking file operations) and ``_ranges`` (pure
range and block bookkeeping).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import trio

from r8imfs._threads import run_io
from r8imfs._units import MiB
from r8imfs.cache import _blobfiles as _files
from r8imfs.cache.reader import BlobReader as BlobReader
from r8imfs.cache.reader import BlobSource as BlobSource
from r8imfs.cache.reader import BlobStreamLike as BlobStreamLike
from r8imfs.cache.reader import SyncBlobFile as SyncBlobFile
from r8imfs.errors import RegistryError
from r8imfs.oci.reference import Repository

DEFAULT_BLOCK_SIZE = 4 * MiB
DEFAULT_READAHEAD = 4
DEFAULT_PARALLEL = 8
DEFAULT_MAX_BYTES = 20 * 1024 * MiB


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/r8imfs``, else ``~/.cache/r8imfs``."""
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "r8imfs"


class BlobCache:
    """The shared, bounded on-disk cache; owns the nursery of background fetches.

    Use as ``async with BlobCache(dir, max_bytes) as cache:``; open readers
    with ``cache.open(...)`` or ``async with cache.reader(...)``. One
    ``BlobReader`` exists per digest per cache: a second ``open`` of the same
    digest shares it (and its client and repository).

    What readers call: ``background`` (the nursery their fetches live in),
    ``note_written`` (usage, for eviction), ``count_request``/``count_bytes``
    (the totals), ``ranges_refused``/``refuse_ranges`` (registries that
    answer a range with the whole blob) and ``forget`` (a reader closed).
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
                await reader.close()
        finally:
            self._nursery.cancel_scope.cancel()
            stack, self._stack, self._nursery = self._stack, None, None
            await stack.aclose()

    def path_of(self, digest: str) -> Path:
        """The data file that caches ``digest``."""
        return _files.Paths.of(self.root, digest).data

    async def open(
        self,
        client: BlobSource,
        repo: Repository,
        digest: str,
        size: int,
        *,
        block_size: int | None = None,
    ) -> BlobReader:
        """A reader of ``digest`` (``size`` bytes, from the descriptor); ``aclose`` it.

        ``block_size`` (default the cache's) is the fetch granularity of a new
        reader; a digest already open keeps the one it has.
        """
        if self._nursery is None:
            raise RuntimeError("BlobCache used outside `async with`")
        while (reader := self._readers.get(digest)) is not None:
            if await reader.wait_opened():
                break
        if reader is None:
            reader = self._readers[digest] = BlobReader(
                self, client, repo, digest, size, block_size
            )
            await reader.start()
        if reader.size != size:
            raise RegistryError(f"blob {digest} opened with sizes {reader.size} and {size}")
        reader.retain()
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

    def note_written(self, n: int) -> None:
        """``n`` more bytes on disk: evict in the background once over the bound."""
        self._usage += n
        if self._usage > self.max_bytes and not self._evicting and self._nursery is not None:
            self._evicting = True
            self._nursery.start_soon(self._evict_in_background)

    async def _evict_in_background(self) -> None:
        try:
            await self.evict()
        finally:
            self._evicting = False

    def count_request(self) -> None:
        self.requests += 1

    def count_bytes(self, n: int) -> None:
        self.bytes_fetched += n

    def ranges_refused(self, registry: str, digest: str) -> bool:
        """Whether ``registry`` answered a ranged GET of ``digest`` with the whole blob."""
        return (registry, digest) in self._no_ranges

    def refuse_ranges(self, registry: str, digest: str) -> None:
        self._no_ranges.add((registry, digest))

    def forget(self, reader: BlobReader) -> None:
        """A closing reader leaves: the next ``open`` of its digest makes a new one."""
        if self._readers.get(reader.digest) is reader:
            del self._readers[reader.digest]

    def background(self) -> trio.Nursery:
        """The cache's nursery, for work that lives as long as the cache (readahead)."""
        if self._nursery is None:
            raise trio.ClosedResourceError("the blob cache is closed")
        return self._nursery
