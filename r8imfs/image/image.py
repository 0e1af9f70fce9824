"""An image's files, ready to serve: trees and readers, FUSE-free.

``ImageFiles.open`` turns a resolved image into what a filesystem needs:
the manifest and config bytes, each layer's own tree (``LayerTree``), the
merged root filesystem (``MergedTree``) and a thread-safe reader per layer.

Per layer: a ``BlobReader`` from the shared ``BlobCache`` (lazy ranged GETs,
on-disk cache), its index from ``indexdb.load_or_build`` (built once by a
streaming pass, then reused across runs), and the layer reader the index
opens (gzip checkpoints, zstd frames or plain offsets). Indexes are built
in worker threads, at most ``INDEX_PARALLEL`` at once (it is CPU-bound).

``read(node, offset, size)`` answers from bytes the layer reader holds decoded
when it can (``LayerReader.cached`` via ``readat.cached_entry``: a gzip
handle's buffer, a decoded copy in the page cache), else runs the engine in a worker
thread; the engine pulls compressed bytes back through ``SyncBlobFile`` →
``BlobReader.read`` on the loop. A failure surfaces as an ``R8imfsError``
or ``OSError`` for the caller (the FUSE adapter maps it to EIO).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import trio

from r8imfs import _threads
from r8imfs.cache.blobcache import BlobCache, BlobReader, BlobSource
from r8imfs.engine.codecs.layerformat import LayerFormat, Toc, TocLayer, choose
from r8imfs.engine.codecs.table import CODECS, codec_for
from r8imfs.engine.codecs.tocread import chunk_units
from r8imfs.engine.codecs.units import Decoder, UnitTable, units_for_layer, zran_inflate
from r8imfs.engine.decodedcopy import DecodedReader, Pending, worth_keeping
from r8imfs.engine.entry import Entry
from r8imfs.engine.indexdb import (
    LayerIndex,
    build_decoded_index,
    index_path,
    load_cached,
    load_or_build,
    write,
)
from r8imfs.engine.merged import LayerTree, MergedTree, Node
from r8imfs.engine.readat import LayerReader, ReadAt, ScanProgress, cached_entry, read_entry
from r8imfs.errors import CorruptLayer, DigestMismatch, R8imfsError
from r8imfs.image.fetchplan import DecodedCache, ReadStream, UnitReader
from r8imfs.image.pipe import consume_stream
from r8imfs.image.toclayer import RangeGets, open_toc_layer, record_path
from r8imfs.oci.digest import short
from r8imfs.oci.manifest import Descriptor, Manifest
from r8imfs.oci.reference import Repository

log = logging.getLogger("r8imfs.image")
INDEX_PARALLEL = 2
#: decoded bytes per worker-thread round trip when serving reads, and how many to keep
DECODED_BLOCK = 4 * 1024 * 1024
DECODED_BLOCKS = 6
#: decoded blocks read ahead of a sequential reader when a layer is TOC-served
TOC_AHEAD = max(2, os.cpu_count() or 2)
#: decoded units kept per mount (all layers), besides those in flight; sequential
#: readers share it for their read-ahead (``fetchplan.DecodedCache.share``)
UNITS_BUDGET = 48 * 1024 * 1024
#: a TOC layer's small files around one read, fetched with it (compressed bytes):
#: ``cp -r`` of a directory of small files costs a GET per this much, not per file
TOC_READ_AROUND = 512 * 1024
BlockLoader = Callable[[Node, int], Awaitable[bytes]]
#: (layer, entry ordinal, block number)
BlockKey = tuple[int, int, int]
#: (layer index, bytes done, bytes total) while indexing
IndexProgress = Callable[[int, int, int], None]


@dataclass(slots=True)
class LayerFiles:
    index: int
    descriptor: Descriptor
    entries: tuple[Entry, ...]
    tree: LayerTree
    reader: LayerReader
    blob: BlobReader
    streamed: int = 0  # bytes of the blob streamed past the blob cache (decoded copy)
    layer_index: LayerIndex | None = None
    #: fetches and decodes units in parallel when the index has a unit table
    units: UnitReader | None = None
    toc: Toc | None = None  # the TOC it is served from, if any
    #: units a TOC gives it (chunks, spans), each checked by its decoder
    toc_units: tuple[UnitTable, Decoder | None] | None = None

    @property
    def name(self) -> str:
        """``NN-<first 12 hex of the digest>``, the directory name under ``layers/``."""
        return f"{self.index:02d}-{short(self.descriptor.digest)}"


@dataclass(slots=True)
class ImageFiles:
    manifest_raw: bytes
    config_raw: bytes
    layers: list[LayerFiles]
    rootfs: MergedTree
    decoded: DecodedBlocks
    pool: ThreadPoolExecutor | None = field(default=None, repr=False)

    @classmethod
    async def open(
        cls,
        client: BlobSource,
        repo: Repository,
        manifest: Manifest,
        config_raw: bytes,
        cache: BlobCache,
        cache_dir: Path,
        progress: IndexProgress | None = None,
        *,
        decoded_copies: bool = True,
        tocs: Mapping[str, Toc] | None = None,
    ) -> ImageFiles:
        """``tocs``: TOCs found for layers (``image.tocs.find_tocs``), by layer digest."""
        slots: list[LayerFiles | None] = [None] * len(manifest.layers)
        limiter = trio.CapacityLimiter(INDEX_PARALLEL)
        # span checks and inflates of every TOC-served layer share the cores
        pool = _span_pool() if tocs else None

        async def one(i: int, desc: Descriptor) -> None:
            fmt = choose(desc.media_type, (tocs or {}).get(desc.digest))
            async with limiter:
                opener = _LayerOpener(client, repo, cache, cache_dir, progress, pool)
                slots[i] = await opener.open(i, desc, fmt, decoded_copies)

        try:
            async with trio.open_nursery() as nursery:
                for i, desc in enumerate(manifest.layers):
                    nursery.start_soon(one, i, desc)
        except BaseExceptionGroup as group:
            await _close_all(slots)
            _shutdown(pool)
            raise _first(group) from None
        layers = [s for s in slots if s is not None]
        _attach_units(layers, cache.background(), DecodedCache(UNITS_BUDGET))
        rootfs = await _threads.run_sync(MergedTree.build, [list(x.entries) for x in layers])
        # a layer read through its TOC inflates each block in the worker that
        # asks for it: more blocks ahead, more cores at work on one sequential copy
        ahead = TOC_AHEAD if any(x.toc is not None for x in layers) else 1
        decoded = DecodedBlocks(cache.background(), ahead=ahead)
        return cls(manifest.raw, config_raw, layers, rootfs, decoded, pool)

    def stream(self, node: Node) -> ReadStream | None:
        """A read-ahead context for one open file (``close`` it on release), if its
        layer is read by units; None otherwise (``read`` then needs none)."""
        units = self.layers[node.layer].units
        if units is None:
            return None
        e = node.entry
        stored = sum(n for _, n in e.sparse) if e.sparse else e.size
        return units.stream(end=e.data_offset + stored)

    async def read(
        self, node: Node, offset: int, size: int, stream: ReadStream | None = None
    ) -> bytes | bytearray | memoryview:
        """``size`` bytes of a file at ``offset``: from its layer's units when it has
        them (``stream``: the open file's read-ahead), else through the decoded
        blocks."""
        e = node.entry
        end = min(e.size, offset + size)
        if offset >= end:
            return b""
        layer = self.layers[node.layer]
        if layer.units is not None:
            return await _read_units(layer.units, e, offset, end, stream)
        # A sequential copy's reads mostly fall in bytes a gzip handle decoded
        # ahead: served here, without a thread round trip (docs/benchmarks.md).
        hit = cached_entry(layer.reader, e, offset, end - offset)
        if hit is not None:
            return hit
        parts = []
        for block in range(offset // DECODED_BLOCK, (end - 1) // DECODED_BLOCK + 1):
            data = await self.decoded.get(node, block, self._load_block)
            base = block * DECODED_BLOCK
            parts.append(data[max(offset - base, 0) : end - base])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _load_block(self, node: Node, block: int) -> bytes:
        reader = self.layers[node.layer].reader
        start = block * DECODED_BLOCK
        return await _threads.run_sync(read_entry, reader, node.entry, start, DECODED_BLOCK)

    @property
    def bytes_fetched(self) -> int:
        return sum(x.blob.bytes_fetched + x.streamed for x in self.layers)

    def describe_read(self, node: Node, offset: int, size: int) -> str:
        """What a read of the file is waiting for (for the log of one that timed out)."""
        units = self.layers[node.layer].units
        if units is None or node.entry.sparse:
            return "read through the layer reader"
        return units.describe(node.entry.data_offset + offset, size)

    async def aclose(self) -> None:
        try:
            await _close_all(list(self.layers))
        finally:
            _shutdown(self.pool)


def _span_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="soci-span")


def _shutdown(pool: Executor | None) -> None:
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


class DecodedBlocks:
    """A small LRU of decoded file blocks, with readahead for sequential readers.

    FUSE asks for 128 KiB at a time; one worker-thread round trip per request
    caps a copy near 100 MiB/s whatever the codec. Decoding ``DECODED_BLOCK``
    bytes of a file per round trip, serving the next requests from memory,
    and decoding the following ``ahead`` blocks in the background while they
    are served keeps both cores busy (one block ahead is enough when a block
    is a ``pread`` of a decoded copy; a TOC-served layer inflates in the
    worker that asks, so it gets as many as there are cores). Bounded:
    ``DECODED_BLOCKS`` blocks in all (more if ``ahead`` needs them).
    Concurrent requests for one block share one decode.
    """

    def __init__(
        self, nursery: trio.Nursery, capacity: int = DECODED_BLOCKS, ahead: int = 1
    ) -> None:
        self._nursery = nursery
        self._capacity = max(capacity, 2 * ahead + 2)
        self._ahead = ahead
        self._blocks: OrderedDict[BlockKey, bytes] = OrderedDict()
        self._pending: dict[BlockKey, trio.Event] = {}

    async def get(self, node: Node, block: int, load: BlockLoader) -> bytes:
        key = (node.layer, node.entry.ordinal, block)
        data = self._blocks.get(key)
        if data is None:
            data = await self._fill(key, node, block, load)
        else:
            self._blocks.move_to_end(key)
        sequential = block > 0 and (key[0], key[1], block - 1) in self._blocks
        for n in range(block + 1, block + 1 + self._ahead) if sequential else ():
            nxt = (key[0], key[1], n)
            if n * DECODED_BLOCK >= node.entry.size:
                break
            if nxt not in self._blocks and nxt not in self._pending:
                self._nursery.start_soon(self._prefetch, nxt, node, n, load)
        return data

    async def _fill(
        self, key: tuple[int, int, int], node: Node, block: int, load: BlockLoader
    ) -> bytes:
        while (event := self._pending.get(key)) is not None:
            await event.wait()
            if key in self._blocks:
                return self._blocks[key]
        event = self._pending[key] = trio.Event()
        try:
            data = await load(node, block)
        finally:
            del self._pending[key]
            event.set()
        self._blocks[key] = data
        while len(self._blocks) > self._capacity:
            self._blocks.popitem(last=False)
        return data

    async def _prefetch(
        self, key: tuple[int, int, int], node: Node, block: int, load: BlockLoader
    ) -> None:
        with contextlib.suppress(Exception):  # a real read will retry and report it
            await self._fill(key, node, block, load)


@dataclass(frozen=True, slots=True)
class _LayerOpener:
    """Opens one layer: from its TOC when it has a usable one, else indexed here."""

    client: BlobSource
    repo: Repository
    cache: BlobCache
    cache_dir: Path
    progress: IndexProgress | None
    pool: Executor | None

    async def open(
        self, i: int, desc: Descriptor, fmt: LayerFormat, decoded_copies: bool
    ) -> LayerFiles:
        if fmt.toc is not None:
            toc_layer = await self._load_toc(i, desc, fmt)
            if toc_layer is not None:
                return await self._from_toc(i, desc, fmt, toc_layer)
        return await _open_layer(
            self.client,
            self.repo,
            i,
            desc,
            self.cache,
            self.cache_dir,
            self.progress,
            decoded_copies,
        )

    async def _load_toc(self, i: int, desc: Descriptor, fmt: LayerFormat) -> TocLayer | None:
        """The layer as its TOC says, unless the layer is indexed here already (a
        local index, or a decoded copy, beats ranged reads) or the TOC is bad."""
        toc, kind = fmt.toc, fmt.toc_format
        assert toc is not None
        assert kind is not None
        local = await _threads.run_sync(
            load_cached, self.cache_dir, desc.digest, desc.media_type, desc.size
        )
        if local is not None:
            return None
        try:
            return await _threads.run_sync(kind.load, toc, desc.size)
        except CorruptLayer as exc:
            log.warning(
                "layer %d (%s): %s %s from %s is not usable: %s; indexing the layer here",
                i,
                short(desc.digest),
                kind.label,
                short(toc.digest),
                toc.source,
                exc.message,
            )
            return None

    async def _from_toc(
        self, i: int, desc: Descriptor, fmt: LayerFormat, toc_layer: TocLayer
    ) -> LayerFiles:
        toc = fmt.toc
        assert toc is not None
        # fetched in blocks sized to its spans (a small file costs about its span,
        # not a 4 MiB block or two)
        blob = await self.cache.open(
            self.client, self.repo, desc.digest, desc.size, block_size=toc_layer.block_size
        )
        try:
            name = f"layer {i} ({short(desc.digest)})"
            opener = functools.partial(
                toc_layer.open_reader, blob.sync_file(), name=name, pool=self.pool
            )
            reader = await _threads.run_sync(opener)
            entries = tuple(toc_layer.entries)
            tree = await _threads.run_sync(LayerTree.build, list(entries), i)
        except BaseException:
            await blob.aclose()
            raise
        if self.progress:
            self.progress(i, desc.size, desc.size)  # nothing to read: indexed already
        log.info(
            "layer %d (%s): served from its %s (%s)", i, short(desc.digest), toc.kind, toc.source
        )
        units = toc_layer.units(name=name)
        return LayerFiles(i, desc, entries, tree, reader, blob, toc=toc, toc_units=units)


async def _open_layer(
    client: BlobSource,
    repo: Repository,
    i: int,
    desc: Descriptor,
    cache: BlobCache,
    cache_dir: Path,
    progress: IndexProgress | None,
    decoded_copies: bool,
) -> LayerFiles:
    blob = await cache.open(client, repo, desc.digest, desc.size)
    try:
        readat = blob.sync_file()

        def report(done: int, total: int) -> None:
            if progress:
                progress(i, done, total)

        keep = decoded_copies and worth_keeping(desc.size, cache.max_bytes)
        reader: LayerReader
        toc = await open_toc_layer(
            desc,
            _toc_readat(client, repo, desc, blob),
            readat,
            record=record_path(index_path(cache_dir, desc.digest)),
        )
        index: LayerIndex | None = None
        units: tuple[UnitTable, Decoder | None] | None = None
        if toc is not None:  # verified chunk by chunk; no index stored (image/toclayer.py)
            entries, reader, streamed = toc.entries, toc.reader, toc.toc_bytes
            units = await _threads.run_sync(chunk_units, toc.reader.index)
        else:
            index, reader, streamed = await _index_layer(
                client, repo, desc, readat, cache_dir, keep, report, cache.background()
            )
            entries = index.entries
        tree = await _threads.run_sync(LayerTree.build, list(entries), i)
    except BaseException as exc:
        await blob.aclose()
        if isinstance(exc, R8imfsError):  # say which layer: the mount fails on one line
            exc.message = f"layer {i} ({desc.digest}): {exc.message}"
        raise
    return LayerFiles(i, desc, tuple(entries), tree, reader, blob, streamed, index, toc_units=units)


def _toc_readat(client: BlobSource, repo: Repository, desc: Descriptor, blob: BlobReader) -> ReadAt:
    """Where a TOC is read: the cache when the blob is there whole, else exact ranged GETs."""
    if blob.complete:
        return blob.sync_file()
    return RangeGets(client, repo, desc.digest, desc.size, fallback=blob.read)


async def _index_layer(
    client: BlobSource,
    repo: Repository,
    desc: Descriptor,
    readat: ReadAt,
    cache_dir: Path,
    keep_decoded: bool,
    progress: ScanProgress,
    background: trio.Nursery,
) -> tuple[LayerIndex, LayerReader, int]:
    """The layer's index (cached, or built now), its open reader, bytes streamed."""
    for _ in range(2):  # again if a decoded copy is evicted between load and open
        index = await _threads.run_sync(
            load_cached, cache_dir, desc.digest, desc.media_type, desc.size
        )
        if index is None and keep_decoded and await _whole_pass(desc, readat):
            index, reader = await _stream_decoded(
                client, repo, desc, cache_dir, progress, background
            )
            return index, reader, desc.size
        if index is None:
            index = await _threads.run_sync(
                functools.partial(
                    load_or_build,
                    cache_dir,
                    desc.digest,
                    desc.media_type,
                    readat,
                    desc.size,
                    progress=progress,
                )
            )
        try:
            return index, await _threads.run_sync(index.open_reader, readat), 0
        except FileNotFoundError:
            continue
    raise R8imfsError(f"the decoded copy of layer {desc.digest} keeps vanishing from the cache")


async def _whole_pass(desc: Descriptor, readat: ReadAt) -> bool:
    """gzip, or zstd without a seek table (one read of the blob's tail)."""
    codec = codec_for(desc.media_type)
    if codec.full_pass_known is not None:
        return codec.full_pass_known  # no read needed
    return await _threads.run_sync(codec.needs_full_pass, readat, desc.size)


async def _stream_decoded(
    client: BlobSource,
    repo: Repository,
    desc: Descriptor,
    cache_dir: Path,
    progress: ScanProgress,
    background: trio.Nursery,
) -> tuple[LayerIndex, LayerReader]:
    """Index a gzip layer from one streamed GET, keeping its decoded copy.

    A layer read whole anyway goes faster as one stream than as 4 MiB ranges
    through the blob cache, and its compressed bytes need no cache: from now
    on it is read from the copy. The copy serves at once; flushing it to disk,
    renaming it into place and storing the index happen in the background
    (``_publish``), off the mount's critical path.
    """
    build = functools.partial(
        build_decoded_index, cache_dir, desc.digest, desc.media_type, desc.size
    )
    try:
        async with client.open_blob(repo, desc.digest) as stream:
            index, pending = await consume_stream(
                _counted(stream.chunks(), desc.size, progress), build
            )
    except DigestMismatch as exc:  # a bad proxy or CDN node, usually: once more
        log.info("%s; fetching it again", exc)
        async with client.open_blob(repo, desc.digest) as stream:
            index, pending = await consume_stream(stream.chunks(), build)
    try:
        reader = await _threads.run_io(DecodedReader, pending.path, index.uncompressed_size)
    except BaseException:
        pending.discard()
        raise
    background.start_soon(_publish, pending, index_path(cache_dir, desc.digest), index)
    return index, reader


async def _publish(pending: Pending, path: Path, index: LayerIndex) -> None:
    """Flush and rename the copy, then store the index; shielded, so an unmount waits."""

    def publish() -> None:
        pending.publish()
        write(path, index)

    with trio.CancelScope(shield=True):
        try:
            await _threads.run_io(publish)
        except Exception as exc:  # the mount goes on; the next one indexes again
            log.warning("could not keep the decoded copy of %s: %s", index.digest, exc)


async def _counted(
    chunks: AsyncIterator[bytes], total: int, progress: ScanProgress
) -> AsyncIterator[bytes]:
    done = 0
    async for chunk in chunks:
        done += len(chunk)
        progress(done, total)
        yield chunk


async def _close_all(layers: list[LayerFiles | None]) -> None:
    for layer in layers:
        if layer is not None:
            if layer.units is not None:
                layer.units.close()
            layer.reader.close()
            await layer.blob.aclose()


def _attach_units(layers: list[LayerFiles], nursery: trio.Nursery, cache: DecodedCache) -> None:
    """A ``UnitReader`` for each layer that has units and is read from its blob (not
    from a decoded copy): a TOC's chunks or spans, or its index's frames and
    checkpoint spans. Parallel ranged GETs and decodes."""
    for layer in layers:
        index = layer.layer_index
        found = layer.toc_units
        if found is None:
            if index is None or layer.streamed or index.decoded is not None:
                continue
            found = units_for_layer(
                index.compression,
                index.checkpoints,
                layer.descriptor.size,
                index.uncompressed_size,
                span_inflater=zran_inflate,
                digests=index.span_digests,
            )
        if found is not None:
            table, decode = found
            # Units checked one by one (``UnitTable.verified``: TOC chunks, zTOC
            # spans, gzip spans with digests in the index): what a sequential
            # reader's read-ahead fetches goes straight to it, with no copy in
            # the blob cache (a disk write and two hashes per byte saved); what
            # is read at random is kept. Read-around rides that uncached path
            # too, so it needs verified units; it only ever acts on small units
            # (TOC chunks of small files: ``fetchplan._small``), never on spans.
            blob = layer.blob
            uncached = functools.partial(blob.fetch_range, keep=False)
            # bytes per ranged GET (four in flight) and read ahead: the codec's
            # (``Codec.get_size``); 16 MiB rather than 8 for gzip halved a ``cp``'s
            # GETs (131 to 69 per GiB) and cut the test registry's CPU 1.5 -> 1.2 s
            get_size = CODECS[table.compression].get_size
            layer.units = UnitReader(
                table,
                blob.fetch_range,
                decode,
                nursery,
                cache=cache,
                key=layer.index,
                max_window=get_size,
                max_range=get_size,
                prefetch_fetch=uncached if table.verified else None,
                read_around=TOC_READ_AROUND if table.verified else 0,
            )


async def _read_units(
    units: UnitReader, e: Entry, offset: int, end: int, stream: ReadStream | None
) -> bytes | memoryview:
    """A file's ``[offset, end)`` from its layer's units; sparse holes read as zeros."""
    try:
        if not e.sparse:
            return await units.read(e.data_offset + offset, end - offset, stream)
        out = bytearray(end - offset)
        stored = e.data_offset
        for ext_off, ext_len in e.sparse:
            lo, hi = max(offset, ext_off), min(end, ext_off + ext_len)
            if lo < hi:
                piece = await units.read(stored + lo - ext_off, hi - lo, stream)
                out[lo - offset : lo - offset + len(piece)] = piece
            stored += ext_len
        return bytes(out)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise R8imfsError(f"reading {e.path}: {exc}") from exc


def _first(group: BaseExceptionGroup) -> BaseException:
    """The first real error of a group (one line for the user, not a tree)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        return exc
    return group
