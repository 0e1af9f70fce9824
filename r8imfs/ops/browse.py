"""Looking inside an image without FUSE: the mount's engine, driven directly.

``open_image`` does what ``r8imfs mount`` does before it mounts (resolve,
open every layer through the shared ``BlobCache``, load or build each
layer's index, merge the trees with whiteouts) and yields the same
``ImageFiles``: same cache directory, same decoded copies, same digest
checks. ``ls``, ``cat``, ``cp`` and ``tensors`` are then plain reads of it,
so they work where ``/dev/fuse`` does not (a container without
``--device /dev/fuse``, a machine without FUSE).

Paths are looked up as a process chrooted into the image would see them:
symlinks in the middle of a path are followed, resolved against the
image's root and never above it (``/lib -> usr/lib`` works, ``..`` stops
at ``/``); whether the last component is followed is the caller's choice.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from r8imfs.cache.blobcache import BlobCache
from r8imfs.engine.entry import Kind, join
from r8imfs.engine.merged import MergedTree, Node
from r8imfs.errors import CorruptLayer, PathNotFound
from r8imfs.image.image import DECODED_BLOCK, ImageFiles
from r8imfs.oci.manifest import Platform
from r8imfs.oci.reference import Reference
from r8imfs.ops.progress import Bar, Transfers
from r8imfs.registry.client import RegistryClient

#: bytes per read when streaming a file out: whole decoded blocks, so each
#: read is one worker-thread round trip and the next block decodes meanwhile
CHUNK = DECODED_BLOCK
MAX_SYMLINKS = 40  # as Linux's path walk


@dataclass(frozen=True, slots=True)
class CacheOptions:
    """Where the cache lives and how big it may grow, as for ``mount``.

    ``sparse`` is for callers that will only read a few small pieces once the
    image is open (``tensors``): blob readahead, which serves the indexing
    pass and sequential copies, is turned off after indexing. Otherwise a
    header read just past the tar header the indexing pass read looks like a
    sequential stream, and the cache would fetch ``readahead`` more blocks.
    """

    cache_dir: Path
    max_bytes: int
    decoded_copies: bool = True
    sparse: bool = False


@contextlib.asynccontextmanager
async def open_image(
    client: RegistryClient,
    ref: Reference,
    platform: Platform,
    cache: CacheOptions,
    board: Transfers,
) -> AsyncIterator[ImageFiles]:
    """The image's files, as the mount serves them; closed on exit."""
    image = await client.resolve(ref, platform)
    async with BlobCache(cache.cache_dir, cache.max_bytes) as blobs:
        files = await ImageFiles.open(
            client,
            ref.repository,
            image.manifest,
            image.config.raw,
            blobs,
            cache.cache_dir,
            IndexBars(board, len(image.manifest.layers)),
            decoded_copies=cache.decoded_copies,
        )
        if cache.sparse:
            blobs.readahead = 0
        try:
            yield files
        finally:
            await files.aclose()


class IndexBars:
    """One progress bar per layer being indexed (only layers not indexed before).

    Indexing reports from worker threads (and from the loop, for a streamed
    layer), several layers at once, while ``Transfers`` expects one thread:
    the lock makes each update whole.
    """

    def __init__(self, board: Transfers, layers: int) -> None:
        self.board = board
        self.layers = layers
        self.bars: dict[int, Bar] = {}
        self._lock = threading.Lock()

    def __call__(self, layer: int, done: int, total: int) -> None:
        with self._lock:
            bar = self.bars.get(layer)
            if bar is None:
                label = f"indexing layer {layer + 1}/{self.layers}"
                bar = self.bars[layer] = self.board.bar(label, total)
            bar.advance(done - bar.done)
            if done >= total:
                bar.finish()


# -- paths ------------------------------------------------------------------------


def resolve(tree: MergedTree, path: str, *, follow: bool) -> Node:
    """The node at ``path``, symlinks followed inside the image; ``PathNotFound`` if none."""
    node = _walk(tree, path, follow, [0])
    if node is None:
        raise PathNotFound(f"no such file or directory in the image: /{path.strip('/')}")
    return node


def _walk(tree: MergedTree, path: str, follow: bool, hops: list[int]) -> Node | None:
    parts = [p for p in path.split("/") if p and p != "."]
    at = tree.lookup("")
    for i, part in enumerate(parts):
        if at is None or not at.is_dir:
            return None
        if part == "..":
            at = tree.lookup(at.path.rpartition("/")[0])
            continue
        at = tree.lookup(join(at.path, part))
        last = i == len(parts) - 1
        if at is not None and at.kind is Kind.SYMLINK and (follow or not last):
            at = _follow(tree, at, hops)
    return at


def _follow(tree: MergedTree, link: Node, hops: list[int]) -> Node | None:
    hops[0] += 1
    if hops[0] > MAX_SYMLINKS:
        raise PathNotFound(f"too many levels of symbolic links at /{link.path}")
    target = link.entry.linkname
    base = "" if target.startswith("/") else link.path.rpartition("/")[0]
    return _walk(tree, f"{base}/{target}", True, hops)


# -- listing ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One listed name: ``path`` relative to the image root, metadata as ``ls -l`` shows."""

    path: str
    node: Node

    @property
    def name(self) -> str:
        return self.node.name or "/"


@dataclass(frozen=True, slots=True)
class Listing:
    """``rows`` to show; ``top`` the directory listed (a file's own directory)."""

    top: str
    rows: list[Row]


def listing(tree: MergedTree, path: str, *, recursive: bool, long: bool) -> Listing:
    """What ``ls`` shows for ``path``: a directory's children (all below, if
    ``recursive``), or the file itself. A symlink named last is listed as
    itself with ``long``, else followed when it leads to a directory (GNU ls)."""
    node = resolve(tree, path, follow=False)
    if node.kind is Kind.SYMLINK and not long:
        target = _walk(tree, path, True, [0])
        if target is not None and target.is_dir:
            node = target
    if not node.is_dir:
        return Listing(node.path.rpartition("/")[0], [Row(node.path, node)])
    if not recursive:
        names = tree.listdir(node.path)
        return Listing(
            node.path, [Row(p, tree.node(p)) for p in (join(node.path, n) for n in names)]
        )
    return Listing(node.path, [Row(n.path, n) for n in preorder(tree, node)])


def preorder(tree: MergedTree, top: Node) -> list[Node]:
    """Every node under ``top``, depth first, names sorted, ``top`` excluded."""
    out: list[Node] = []
    stack = [join(top.path, n) for n in reversed(tree.listdir(top.path))]
    while stack:
        node = tree.node(stack.pop())
        out.append(node)
        if node.is_dir:
            stack.extend(join(node.path, n) for n in reversed(tree.listdir(node.path)))
    return out


# -- reading ----------------------------------------------------------------------


async def chunks(
    files: ImageFiles, node: Node, chunk: int = CHUNK
) -> AsyncIterator[bytes | memoryview]:
    """A file's bytes in order, ``chunk`` at a time (never the whole file in memory);
    a piece may be a view into a decoded unit, valid as long as it is held."""
    offset = 0
    stream = files.stream(node)  # read-ahead, on a layer read by units
    try:
        while offset < node.entry.size:
            data = await files.read(node, offset, chunk, stream)
            if not data:
                raise CorruptLayer(
                    f"/{node.path}: the layer ends {node.entry.size - offset} bytes early"
                )
            offset += len(data)
            yield bytes(data) if isinstance(data, bytearray) else data
    finally:
        if stream is not None:
            stream.close()


def readable(node: Node) -> Node:
    """``node`` if it has bytes to read, else the reason as an error."""
    if node.is_dir:
        raise PathNotFound(f"/{node.path} is a directory")
    if node.kind not in (Kind.FILE, Kind.HARDLINK):
        raise PathNotFound(f"/{node.path} is a {node.kind.value}, not a regular file")
    return node
