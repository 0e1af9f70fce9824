"""A tar file streamed into a gzip layer blob: one pass, bounded memory.

``GzipFile.run`` reads the tar in 1 MiB pieces in a worker thread, hashing
each (the diff_id is the sha256 of the uncompressed tar, image-spec
config.md) and deflating it, and sends the gzip bytes to a bounded channel
that the upload drains while the next piece compresses; the upload hashes
the gzip bytes (the blob digest) on the way. ``drain`` turns the channel
into the upload body and refuses to end cleanly unless the producer
finished, so a failed producer can never commit a truncated blob. If the
upload has to start over (registry/upload.py), the tar is read and
compressed again: the same bytes, as deflate is deterministic.

``spool`` copies a stream that can be read only once (stdin) to a
temporary file, so the tar can be checked before anything is pushed and
then read again for the upload.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import trio

from r8imfs._threads import run_io, run_sync
from r8imfs.errors import R8imfsError
from r8imfs.oci.manifest import Descriptor
from r8imfs.oci.reference import Repository
from r8imfs.ops._tasks import collapse_groups
from r8imfs.registry.client import RegistryClient
from r8imfs.registry.upload import upload_stream

PIECE = 1024 * 1024
#: gzip level: 1 is what go-containerregistry uses by default; weights barely
#: compress, and level 6 would cost several times the CPU for a few percent.
DEFAULT_LEVEL = 1
#: Compressed pieces waiting for the upload.
QUEUE = 4


class GzipFile:
    """One pass over a tar file: diff_id, gzip bytes; ``completed`` at the end."""

    def __init__(
        self,
        path: Path,
        *,
        level: int = DEFAULT_LEVEL,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self._deflater = zlib.compressobj(level, zlib.DEFLATED, 31)
        self._tar = hashlib.sha256()
        self.tar_size = 0
        self._progress = progress
        self.completed = False

    @property
    def diff_id(self) -> str:
        return "sha256:" + self._tar.hexdigest()

    def _step(self, f: BinaryIO) -> tuple[bytes, int]:
        data = f.read(PIECE)
        if not data:
            return self._deflater.flush(), 0
        self._tar.update(data)
        self.tar_size += len(data)
        return self._deflater.compress(data), len(data)

    async def run(self, out: trio.MemorySendChannel[bytes]) -> None:
        async with out:
            f = await run_io(open, self.path, "rb")
            try:
                while True:
                    piece, consumed = await run_sync(self._step, f)
                    if piece:
                        await out.send(piece)
                    if self._progress and consumed:
                        self._progress(consumed)
                    if not consumed:
                        break
            finally:
                await run_io(f.close)
            self.completed = True


async def drain(
    recv: trio.MemoryReceiveChannel[bytes], completed: Callable[[], bool]
) -> AsyncIterator[bytes]:
    """The channel as an upload body; raises instead of ending if the producer failed."""
    async with recv:
        async for chunk in recv:
            yield chunk
    if not completed():
        raise R8imfsError("the layer stream stopped before its end; nothing was committed")


@dataclass(frozen=True, slots=True)
class UploadedLayer:
    blob: Descriptor  # media type left to the caller: it depends on the manifest
    diff_id: str
    tar_size: int


async def upload_tar_as_gzip(
    client: RegistryClient,
    repo: Repository,
    path: Path,
    *,
    level: int = DEFAULT_LEVEL,
    progress: Callable[[int], None] | None = None,
) -> UploadedLayer:
    """Stream ``path`` as a gzip blob into ``repo``; its digest, size and diff_id."""
    producers: list[GzipFile] = []

    @asynccontextmanager
    async def body() -> AsyncIterator[AsyncIterable[bytes]]:
        # a fresh pass over the tar for each attempt of the upload
        producer = GzipFile(path, level=level, progress=progress if not producers else None)
        producers.append(producer)
        async with producing(producer.run) as recv:
            yield drain(recv, lambda: producer.completed)

    up = await upload_stream(client, repo, body)
    last = producers[-1]
    return UploadedLayer(Descriptor("", up.digest, up.size), last.diff_id, last.tar_size)


@asynccontextmanager
async def producing(
    run: Callable[[trio.MemorySendChannel[bytes]], Awaitable[None]], queue: int = QUEUE
) -> AsyncIterator[trio.MemoryReceiveChannel[bytes]]:
    """``run`` in a task feeding the channel yielded; cancelled if the consumer gives up."""
    send, recv = trio.open_memory_channel[bytes](queue)
    with collapse_groups():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, send)
            try:
                yield recv
            except BaseException:
                nursery.cancel_scope.cancel()
                raise


def _copy_to_temp(src: BinaryIO, directory: str | None) -> Path:
    fd, name = tempfile.mkstemp(prefix="r8imfs-", suffix=".tar", dir=directory)
    try:
        with os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, PIECE)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


@asynccontextmanager
async def spool(src: BinaryIO, directory: str | None = None) -> AsyncIterator[Path]:
    """``src`` copied to a temporary file (removed on exit)."""
    path = await run_sync(_copy_to_temp, src, directory)
    try:
        yield path
    finally:
        await run_io(path.unlink, True)
