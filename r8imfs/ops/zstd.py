"""``zstd``: every layer recompressed as zstd:chunked + seekable zstd; diff_ids unchanged.

Each gzip (or plain) layer streams down, through ``image.recompress``
(verified against its digest and diff_id, cut into independent frames per
tar header run and body chunk, compressed on ``threads`` threads per layer,
zstd:chunked TOC next, seek table last) and straight back up; the TOC's
position and checksum go into the new layer descriptor's annotations.
``jobs`` layers run at once; each holds a bounded number of frames, so
memory does not grow with layer size. Layers already zstd are mounted as
they are. The manifest and config become OCI (zstd has no Docker media
type); a layer shared by several platforms is recompressed once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import trio

from r8imfs._threads import run_io
from r8imfs._units import human_size
from r8imfs.errors import CorruptLayer, DigestMismatch, UnsupportedMediaType
from r8imfs.image.recompress import FRAME_SIZE, Recompressed, recompress_stream
from r8imfs.oci import mediatypes as mt
from r8imfs.oci.digest import Hasher, short
from r8imfs.oci.manifest import Descriptor, Platform
from r8imfs.oci.reference import Reference, Repository
from r8imfs.ops._tasks import gather
from r8imfs.ops.common import (
    Context,
    Needed,
    NewImage,
    Pushed,
    load_source,
    manifest_annotations,
    place_blobs,
    push_images,
)
from r8imfs.ops.layerstream import drain, producing
from r8imfs.registry.client import RegistryClient
from r8imfs.registry.upload import Body, Uploaded, upload_stream

log = logging.getLogger("r8imfs.ops")

#: Recompressed frames waiting for the upload, per layer.
OUT_QUEUE = 2


@dataclass(frozen=True, slots=True)
class ZstdOptions:
    level: int = 3
    platform: Platform | None = None
    all_platforms: bool = False
    frame_size: int = FRAME_SIZE
    threads: int = min(4, max(2, os.cpu_count() or 1))
    jobs: int = 2


@dataclass(frozen=True, slots=True)
class _Work:
    descriptor: Descriptor
    diff_id: str | None


async def recompress_layer(
    client: RegistryClient,
    src: Repository,
    dest: Repository,
    work: _Work,
    options: ZstdOptions,
    ctx: Context,
) -> Descriptor:
    """Stream one layer down, through zstd, and up; the new layer's descriptor."""
    d = work.descriptor
    compression = mt.layer_compression(d.media_type) or "unknown"
    bar = ctx.progress.bar(f"zstd {short(d.digest)}", d.size)
    done: list[Recompressed] = []

    @asynccontextmanager
    async def body() -> AsyncIterator[AsyncIterable[bytes]]:
        # each attempt of the upload streams the layer down and recompresses it again
        done.clear()
        async with client.open_blob(src, d.digest) as stream:
            chunks = counted(stream.chunks(), bar.advance)

            async def produce(send: trio.MemorySendChannel[bytes]) -> None:
                with send:  # closed on every path; ``drain`` tells success from failure
                    done.append(
                        await recompress_stream(
                            chunks,
                            compression,
                            send.send,
                            expected_digest=d.digest,
                            expected_diff_id=work.diff_id,
                            level=options.level,
                            frame_size=options.frame_size,
                            threads=options.threads,
                        )
                    )

            async with producing(produce, OUT_QUEUE) as recv:
                yield drain(recv, lambda: bool(done))

    try:
        up = await _upload_checked(client, src, dest, d.digest, body)
    finally:
        bar.finish()
    ctx.notify(
        f"layer {short(d.digest)}: {human_size(d.size)} {compression} -> "
        f"{human_size(up.size)} zstd ({done[0].result.frames} frame(s)) {short(up.digest)}"
    )
    # the zstd:chunked TOC position and checksum; never the eStargz toc.digest
    # (containers/image refuses a layer that carries both)
    annotations = done[0].result.annotations or None
    return Descriptor(mt.OCI_LAYER_ZSTD, up.digest, up.size, None, annotations)


async def _upload_checked(
    client: RegistryClient, src: Repository, dest: Repository, digest: str, body: Body
) -> Uploaded:
    """Upload the recompressed layer; a layer that fails to decode is fetched once more.

    If the second try fails too, the blob is hashed once more to tell a blob
    corrupt on the way (a bad proxy or CDN node: "blob … is corrupt") from a
    layer that is bad at its source (its error as it was).
    """
    try:
        return await upload_stream(client, dest, body)
    except (CorruptLayer, DigestMismatch) as exc:
        log.info("%s; fetching it again", exc)
    try:
        return await upload_stream(client, dest, body)
    except (CorruptLayer, DigestMismatch) as exc:
        if await _blob_intact(client, src, digest):
            raise
        detail = str(exc).removeprefix(f"{digest}: ")
        raise DigestMismatch(
            f"blob {digest} is corrupt ({detail}); the same when fetched again"
        ) from exc


async def _blob_intact(client: RegistryClient, repo: Repository, digest: str) -> bool:
    hasher = Hasher()
    async with client.open_blob(repo, digest) as stream:
        async for chunk in stream.chunks():
            await run_io(hasher.update, chunk)
    return hasher.digest == digest


async def counted(
    chunks: AsyncIterator[bytes], progress: Callable[[int], None]
) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        progress(len(chunk))
        yield chunk


def _plan(source_children: list[tuple[Descriptor, str | None]]) -> dict[str, _Work]:
    """Layers to recompress, once per digest."""
    todo: dict[str, _Work] = {}
    for d, diff_id in source_children:
        compression = mt.layer_compression(d.media_type)
        if compression is None:
            raise UnsupportedMediaType(f"layer {d.digest} has unknown media type {d.media_type}")
        if compression is not mt.Compression.ZSTD:
            todo.setdefault(d.digest, _Work(d, diff_id))
    return todo


async def recompress_image(
    client: RegistryClient,
    image: Reference,
    dest: Reference,
    options: ZstdOptions,
    ctx: Context,
) -> Pushed:
    source = await load_source(
        client, image, platform=options.platform, all_platforms=options.all_platforms, ctx=ctx
    )
    pairs = []
    for child in source.children:
        diff_ids = child.config.diff_ids
        for i, d in enumerate(child.manifest.layers):
            pairs.append((d, diff_ids[i] if i < len(diff_ids) else None))
    todo = _plan(pairs)
    repo, dest_repo = image.repository, dest.repository
    jobs = [
        partial(recompress_layer, client, repo, dest_repo, w, options, ctx) for w in todo.values()
    ]
    done = dict(zip(todo, await gather(jobs, options.jobs), strict=True))
    kept = [Needed(d, (repo,)) for d, _ in pairs if d.digest not in done]
    await place_blobs(client, dest_repo, kept, ctx)
    images = []
    for child in source.children:
        layers = [
            done.get(d.digest) or Descriptor(d.media_type, d.digest, d.size, None, d.annotations)
            for d in child.manifest.layers
        ]
        images.append(
            NewImage(
                mt.OCI_MANIFEST,
                child.config.data,
                layers,
                child.entry,
                manifest_annotations(child),
            )
        )
    return await push_images(client, dest, source, images)
