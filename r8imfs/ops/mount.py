"""``mount``: an image's layers indexed, then served by whoever mounts them.

Resolves the image's manifest, then fetches its config while it looks for
TOCs published for its layers (a SOCI index's zTOCs, ``image.tocs``: a layer
with a usable one is served from it at once, reading none of its body), opens
the blob cache and the ``ImageFiles`` over it (indexing each other layer, or
loading its cached index), and hands them to ``serve`` for as long as it runs.
The FUSE side (``fs.daemon.serve``) is the caller's: ``ops`` sits beside
``fs``, not above it.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from r8imfs.cache.blobcache import DEFAULT_MAX_BYTES, BlobCache, default_cache_dir
from r8imfs.engine.codecs.layerformat import Toc
from r8imfs.image.image import ImageFiles, IndexProgress
from r8imfs.image.tocs import find_tocs
from r8imfs.oci.manifest import Platform
from r8imfs.oci.reference import Reference
from r8imfs.ops._tasks import collapse_groups
from r8imfs.registry.client import Image, RegistryClient

#: Given the resolved image, the index progress callback to use (or None).
OnResolved = Callable[[Image], IndexProgress | None]


@dataclass(frozen=True, slots=True)
class MountOptions:
    platform: Platform | None = None
    cache_dir: Path | None = None  # default: ``default_cache_dir()``
    max_bytes: int = DEFAULT_MAX_BYTES
    decoded_copies: bool = True
    soci: bool = True  # use the image's SOCI index when it has one


async def mount(
    client: RegistryClient,
    ref: Reference,
    options: MountOptions,
    serve: Callable[[ImageFiles], Awaitable[None]],
    on_resolved: OnResolved | None = None,
) -> None:
    """Index ``ref``'s layers and ``await serve(files)``; close everything after."""
    cache_dir = options.cache_dir or default_cache_dir()
    found = await client.find_manifest(ref, options.platform)
    tocs: dict[str, Toc] = {}

    async def look_for_tocs() -> None:  # never fails: no TOCs, the layers are indexed here
        tocs.update(await find_tocs(client, ref.repository, found.manifest))

    # the config and the SOCI index + zTOCs both hang off the manifest: one round trip less
    with collapse_groups():
        async with trio.open_nursery() as nursery:
            if options.soci:
                nursery.start_soon(look_for_tocs)
            image = await client.with_config(found)
    progress = on_resolved(image) if on_resolved is not None else None
    async with BlobCache(cache_dir, options.max_bytes) as cache:
        files = await ImageFiles.open(
            client,
            ref.repository,
            image.manifest,
            image.config.raw,
            cache,
            cache_dir,
            progress,
            decoded_copies=options.decoded_copies,
            tocs=tocs,
        )
        # What was just built (entries, the merged tree, unit tables) lives as long
        # as the mount: out of the collector's reach, as the imports are (cli.main),
        # so no full collection while serving walks it again.
        gc.freeze()
        try:
            await serve(files)
        finally:
            await files.aclose()
