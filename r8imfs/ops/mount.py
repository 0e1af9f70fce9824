"""``mount``: an image's layers indexed, then served by whoever mounts them.

Resolves the image, looks for TOCs published for its layers (a SOCI index's
zTOCs, ``image.tocs``: a layer with a usable one is served from it at once,
reading none of its body), opens the blob cache and the ``ImageFiles`` over it
(indexing each other layer, or loading its cached index), and hands them to
``serve`` for as long as it runs. The FUSE side (``fs.daemon.serve``) is
the caller's: ``ops`` sits beside ``fs``, not above it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from r8imfs.cache.blobcache import DEFAULT_MAX_BYTES, BlobCache, default_cache_dir
from r8imfs.image.image import ImageFiles, IndexProgress
from r8imfs.image.tocs import find_tocs
from r8imfs.oci.manifest import Platform
from r8imfs.oci.reference import Reference
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
    image = await client.resolve(ref, options.platform)
    progress = on_resolved(image) if on_resolved is not None else None
    tocs = await find_tocs(client, ref.repository, image.manifest) if options.soci else {}
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
        try:
            await serve(files)
        finally:
            await files.aclose()
