"""Writing images: layers first, then the config, then the manifest last.

The manifest goes up only after every blob it references is confirmed
present, so a failure at any step leaves no half image under the tag.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
import zstandard

from r8imfs.errors import RegistryError
from r8imfs.oci import mutate
from r8imfs.oci.manifest import Descriptor, dumps
from r8imfs.oci.reference import Reference, Repository
from r8imfs.registry.client import RegistryClient
from r8imfs.registry.upload import upload_bytes, upload_stream


@dataclass(frozen=True, slots=True)
class BuiltLayer:
    descriptor: Descriptor
    diff_id: str


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


async def push_tar_layer(
    client: RegistryClient, repo: Repository, tar: bytes, compression: str, manifest_type: str
) -> BuiltLayer:
    """Compress an in-memory tar (small layers: tests, demo) and upload it."""
    blob = await trio.to_thread.run_sync(compress, tar, compression)

    async def once() -> AsyncIterator[bytes]:
        yield blob

    @asynccontextmanager
    async def body() -> AsyncIterator[AsyncIterable[bytes]]:
        yield once()  # made again for each attempt of the upload

    up = await upload_stream(client, repo, body)
    media_type = mutate.layer_type_for(manifest_type, compression)
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    return BuiltLayer(Descriptor(media_type, up.digest, up.size), diff_id)


async def push_manifest(
    client: RegistryClient,
    ref: Reference,
    manifest_type: str,
    config: dict[str, Any],
    layers: list[Descriptor],
    *,
    annotations: dict[str, str] | None = None,
) -> str:
    """Upload the config, check every layer is there, PUT the manifest; its digest."""
    pushed = await push_image_manifest(
        client, ref, manifest_type, config, layers, annotations=annotations
    )
    return pushed.digest


async def push_image_manifest(
    client: RegistryClient,
    ref: Reference,
    manifest_type: str,
    config: dict[str, Any],
    layers: list[Descriptor],
    *,
    annotations: dict[str, str] | None = None,
) -> Descriptor:
    """As ``push_manifest``; returns the manifest's descriptor (for an index entry).

    Untagged ``ref`` (tag None): the manifest goes up by digest only, the way
    the children of an index do before the index itself.
    """
    repo = ref.repository
    raw_config = dumps(config)
    await upload_bytes(client, repo, raw_config)
    for layer in layers:
        if await client.head_blob(repo, layer.digest) is None:
            raise RegistryError(
                f"layer {layer.digest} is not in {repo}; refusing to push a manifest without it"
            )
    raw = mutate.build_manifest(
        manifest_type, mutate.config_descriptor(manifest_type, raw_config), layers, annotations
    )
    tag = ref.tag or None
    digest = await client.put_manifest(repo, tag or _digest_of(raw), raw, manifest_type)
    return Descriptor(manifest_type, digest, len(raw))


async def push_index(
    client: RegistryClient,
    ref: Reference,
    media_type: str,
    manifests: list[Descriptor],
    *,
    annotations: dict[str, str] | None = None,
) -> str:
    """PUT an index over manifests already in the repository; its digest."""
    repo = ref.repository
    raw = mutate.build_index(media_type, manifests, annotations)
    tag = ref.tag or None
    return await client.put_manifest(repo, tag or _digest_of(raw), raw, media_type)


def _digest_of(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


async def push_simple_image(
    client: RegistryClient,
    ref: Reference,
    layers: list[tuple[bytes, str, str | None]],
    *,
    manifest_type: str,
    compression: str = "gzip",
    config: dict[str, Any] | None = None,
) -> str:
    """Build and push an image from in-memory tars ``(tar, created_by, comment)``."""
    base = config or mutate.new_config()
    built: list[BuiltLayer] = []
    for tar, _created_by, _comment in layers:
        built.append(await push_tar_layer(client, ref.repository, tar, compression, manifest_type))
    new = [
        mutate.NewLayer(b.descriptor, b.diff_id, created_by, comment)
        for b, (_, created_by, comment) in zip(built, layers, strict=True)
    ]
    cfg = mutate.append_layers(base, new)
    return await push_manifest(client, ref, manifest_type, cfg, [b.descriptor for b in built])
