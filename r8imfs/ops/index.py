"""``index``: publish SOCI indexes for an image, the v2 way; nothing else moves.

For each platform (every one of an index, or just the one asked for), each
gzip or uncompressed layer streams down once through ``engine.codecs.ztocbuild``
(checkpoints every ``span_size`` of output, span digests, file TOC; the
layer's digest is checked on the way) and its zTOC goes up as a blob. Then,
as ``soci convert`` does (``oci/soci.py`` has the facts):

1. the SOCI index manifest (config ``{}`` typed ``…soci.index.v2+json``, one
   ``application/octet-stream`` layer per zTOC) is pushed by digest;
2. the image manifest, annotated with ``com.amazon.soci.index-digest`` (so
   OCI, with a new digest), is pushed by digest; its config and layers are
   the same blobs: mounted into the destination if it is another repository,
   never uploaded;
3. an OCI image index at DEST lists the annotated manifests, then each SOCI
   index descriptor (``artifactType``, platform, ``…image-manifest-digest``).

A layer shared by several platforms is indexed once; a layer the source's own
SOCI index already has a valid zTOC for (same span size) is not read at all,
its zTOC is reused; zstd layers get no zTOC (SOCI has no zstd format) and are
left to local indexing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from r8imfs._units import human_size
from r8imfs.engine.codecs import ztoc, ztocbuild
from r8imfs.engine.codecs.table import CODECS
from r8imfs.engine.codecs.zran import SPAN_SIZE
from r8imfs.errors import DigestMismatch, R8imfsError, UnsupportedMediaType
from r8imfs.image.pipe import consume_stream
from r8imfs.oci import mediatypes as mt
from r8imfs.oci import soci
from r8imfs.oci.config import ImageConfig
from r8imfs.oci.digest import Hasher, sha256, short
from r8imfs.oci.manifest import DEFAULT_PLATFORM, Descriptor, Index, Manifest, Platform
from r8imfs.oci.reference import Reference, Repository
from r8imfs.ops._tasks import gather
from r8imfs.ops.common import Context, Needed, Pushed, is_attestation, place_blobs
from r8imfs.registry.client import MAX_CONFIG, RegistryClient
from r8imfs.registry.referrers import fetch_ztoc, find_soci_index
from r8imfs.registry.upload import upload_bytes


class NothingToIndex(R8imfsError):
    """No layer of the image can have a zTOC (all zstd, or under --min-layer-size)."""


@dataclass(frozen=True, slots=True)
class IndexOptions:
    platform: Platform | None = None  # None: every platform of an index
    span_size: int = SPAN_SIZE
    min_layer_size: int = 0
    jobs: int = 2


@dataclass(frozen=True, slots=True)
class _Child:
    manifest: Manifest
    platform: Platform | None
    entry: dict[str, Any] | None  # its entry in the source index, as JSON


@dataclass(frozen=True, slots=True)
class BuiltZtoc:
    """A zTOC pushed to the destination: its descriptor entry for the SOCI index."""

    layer: Descriptor
    digest: str
    size: int
    files: int
    spans: int
    reused: bool = False  # found in the source's own SOCI index, not built


async def build_layer_ztoc(
    client: RegistryClient,
    src: Repository,
    dest: Repository,
    layer: Descriptor,
    span_size: int,
    ctx: Context,
) -> BuiltZtoc:
    """Stream one layer through the zTOC builder and push the zTOC blob."""
    compression = mt.layer_compression(layer.media_type)
    build = ztocbuild.build_gzip if compression == "gzip" else ztocbuild.build_tar
    bar = ctx.progress.bar(f"index {short(layer.digest)}", layer.size)
    hasher = Hasher()

    async def counted() -> AsyncIterator[bytes]:
        async with client.open_blob(src, layer.digest) as stream:
            async for chunk in stream.chunks():
                bar.advance(len(chunk))
                yield chunk

    try:
        z = await consume_stream(counted(), partial(build, span_size=span_size), hasher=hasher)
    finally:
        bar.finish()
    if hasher.digest != layer.digest or z.compressed_archive_size != layer.size:
        raise DigestMismatch(f"layer {layer.digest}: the blob served hashes to {hasher.digest}")
    data = ztoc.encode(z)
    up = await upload_bytes(client, dest, data)
    ctx.notify(
        f"layer {short(layer.digest)}: {human_size(layer.size)} {compression} -> zTOC "
        f"{short(up.digest)} ({human_size(len(data))}, {len(z.files)} entries, "
        f"{z.max_span_id + 1} spans)"
    )
    return BuiltZtoc(layer, up.digest, len(data), len(z.files), z.max_span_id + 1)


async def index_image(
    client: RegistryClient,
    image: Reference,
    dest: Reference,
    options: IndexOptions,
    ctx: Context,
) -> Pushed:
    """Build and publish SOCI v2 indexes for ``image`` at ``dest``; the image index pushed."""
    top = await client.get_manifest(image)
    children = await _children(client, image, top, options.platform, ctx)
    src, repo = image.repository, dest.repository
    built = await _ztocs(client, src, repo, children, options, ctx)
    if not built:
        raise NothingToIndex(
            f"no layer of {image} can have a zTOC",
            hint="SOCI handles gzip and uncompressed layers; check --min-layer-size",
        )
    await upload_bytes(client, repo, soci.EMPTY_JSON)
    needed = [Needed(d, (src,)) for c in children for d in (c.manifest.config, *c.manifest.layers)]
    needed += [
        Needed(Descriptor(soci.ZTOC_MEDIA_TYPE, b.digest, b.size), (src,))
        for b in built.values()
        if b.reused
    ]
    await place_blobs(client, repo, needed, ctx)
    entries: list[dict[str, Any]] = []
    index_entries: list[dict[str, Any]] = []
    for child in children:
        if not any(d.digest in built for d in child.manifest.layers):
            entries.append(await _republish(client, repo, child, ctx))
            continue
        manifest_raw, index_raw = await _publish_child(client, repo, child, built, options)
        annotations = (child.entry or {}).get("annotations")
        entries.append(soci.manifest_entry(manifest_raw, child.platform, annotations))
        index_entries.append(soci.soci_index_entry(index_raw, manifest_raw, child.platform))
    kept = _kept_entries(top, children, image.repository == repo, ctx)
    annotations = top.data.get("annotations") if isinstance(top, Index) else None
    raw = soci.image_index(kept + entries + index_entries, annotations or None)
    digest = await client.put_manifest(repo, dest.tag or sha256(raw), raw, mt.OCI_INDEX)
    return Pushed(repo, digest, dest.tag)


async def _republish(
    client: RegistryClient, repo: Repository, child: _Child, ctx: Context
) -> dict[str, Any]:
    """A platform with nothing to index, kept as it is (pushed if DEST is elsewhere)."""
    m = child.manifest
    ctx.notify(f"{child.platform}: no layer to index, manifest {short(m.digest)} kept as it is")
    await client.put_manifest(repo, m.digest, m.raw, m.media_type)
    if child.entry is not None:
        return dict(child.entry)
    return {"mediaType": m.media_type, "digest": m.digest, "size": len(m.raw)}


async def _ztocs(
    client: RegistryClient,
    src: Repository,
    repo: Repository,
    children: list[_Child],
    options: IndexOptions,
    ctx: Context,
) -> dict[str, BuiltZtoc]:
    """A zTOC in ``repo`` (reused or built) for every layer to index, by layer digest."""
    todo = _plan(children, options)
    built = await _reuse(client, src, children, todo, options, ctx)
    jobs = [
        partial(build_layer_ztoc, client, src, repo, d, options.span_size, ctx)
        for digest, d in todo.items()
        if digest not in built
    ]
    fresh = await gather(jobs, options.jobs)
    built.update((b.layer.digest, b) for b in fresh)
    return built


async def _reuse(
    client: RegistryClient,
    src: Repository,
    children: list[_Child],
    todo: dict[str, Descriptor],
    options: IndexOptions,
    ctx: Context,
) -> dict[str, BuiltZtoc]:
    """zTOCs the source already publishes (same span size, valid for the layer):
    used as they are, so re-indexing an indexed image reads no layer."""
    found: dict[str, BuiltZtoc] = {}
    for child in children:
        try:
            index = await find_soci_index(client, src, child.manifest)
        except R8imfsError as exc:
            ctx.notify(f"ignoring the source's SOCI index: {exc}")
            continue
        if index is None:
            continue
        for digest, ref in index.ztocs.items():
            layer = todo.get(digest)
            if layer is None or digest in found or ref.span_size != options.span_size:
                continue
            try:
                z = ztoc.decode(await fetch_ztoc(client, src, ref))
                ztoc.validate(z, layer.size, options.span_size)
            except R8imfsError as exc:
                ctx.notify(f"layer {short(digest)}: not reusing zTOC {short(ref.digest)}: {exc}")
                continue
            spans = z.max_span_id + 1
            found[digest] = BuiltZtoc(layer, ref.digest, ref.size, len(z.files), spans, True)
            ctx.notify(f"layer {short(digest)}: reusing zTOC {short(ref.digest)}")
    return found


def _plan(children: list[_Child], options: IndexOptions) -> dict[str, Descriptor]:
    """Layers to index, once per digest."""
    todo: dict[str, Descriptor] = {}
    for child in children:
        for d in child.manifest.layers:
            compression = mt.layer_compression(d.media_type)
            if compression is None:
                raise UnsupportedMediaType(
                    f"layer {d.digest} has unknown media type {d.media_type}"
                )
            if CODECS[compression].ztoc_possible and d.size >= options.min_layer_size:
                todo.setdefault(d.digest, d)
    return todo


async def _publish_child(
    client: RegistryClient,
    repo: Repository,
    child: _Child,
    built: dict[str, BuiltZtoc],
    options: IndexOptions,
) -> tuple[bytes, bytes]:
    """Push one platform's SOCI index, then its annotated manifest; both raw."""
    ztocs = [
        soci.ztoc_descriptor(b.digest, b.size, d, options.span_size)
        for d in child.manifest.layers
        if (b := built.get(d.digest)) is not None
    ]
    index_raw = soci.soci_index(ztocs, ztocbuild.BUILD_TOOL)
    await client.put_manifest(repo, sha256(index_raw), index_raw, mt.OCI_MANIFEST)
    manifest_raw = soci.annotate_manifest(child.manifest, sha256(index_raw))
    await client.put_manifest(repo, sha256(manifest_raw), manifest_raw, mt.OCI_MANIFEST)
    return manifest_raw, index_raw


def _kept_entries(
    top: Manifest | Index, children: list[_Child], same_repo: bool, ctx: Context
) -> list[dict[str, Any]]:
    """Entries of the source index not indexed this time, kept when they can be."""
    if not isinstance(top, Index):
        return []
    done = {c.manifest.digest for c in children}
    kept = []
    for entry in top.data.get("manifests") or []:
        if not isinstance(entry, dict) or entry.get("digest") in done:
            continue
        if entry.get("artifactType") == soci.SOCI_INDEX_V2:
            continue  # an older SOCI index: replaced
        if not same_repo:
            ctx.notify(f"leaving out {short(str(entry.get('digest')))}: not indexed, other repo")
            continue
        kept.append(entry)
    return kept


async def _children(
    client: RegistryClient,
    ref: Reference,
    top: Manifest | Index,
    platform: Platform | None,
    ctx: Context,
) -> list[_Child]:
    if isinstance(top, Manifest):
        return [_Child(top, await _platform_of(client, ref, top), None)]
    entries = [
        e
        for e in top.manifests
        if not is_attestation(e)
        and e.media_type in mt.MANIFESTS
        and (e.annotations or {}).get(soci.MANIFEST_DIGEST) is None
        and (platform is None or (e.platform is not None and platform.matches(e.platform)))
    ]
    if platform is not None:
        if not entries:
            top.select(platform)  # raises PlatformNotFound, naming what there is
        entries = entries[:1]
    raw_entries = {
        e.get("digest"): e for e in top.data.get("manifests") or [] if isinstance(e, dict)
    }
    children = []
    for e in entries:
        child = await client.get_manifest(ref.with_digest(e.digest))
        if not isinstance(child, Manifest):
            raise UnsupportedMediaType(f"index entry {e.digest} of {ref} is not an image manifest")
        if soci.index_version(child) is not None:
            continue  # a SOCI index listed without artifactType
        children.append(_Child(child, e.platform or DEFAULT_PLATFORM, raw_entries.get(e.digest)))
    if not children:
        raise UnsupportedMediaType(f"index {ref} lists no image manifests to index")
    ctx.notify(
        f"indexing {len(children)} platform(s): " + ", ".join(str(c.platform) for c in children)
    )
    return children


async def _platform_of(client: RegistryClient, ref: Reference, m: Manifest) -> Platform:
    """A single image's platform, from its config (the SOCI index entry needs one)."""
    config = ImageConfig.parse(await client.get_blob(ref.repository, m.config.digest, MAX_CONFIG))
    os_, arch = config.data.get("os"), config.data.get("architecture")
    if isinstance(os_, str) and isinstance(arch, str) and os_ and arch:
        variant = config.data.get("variant")
        return Platform(os_, arch, variant if isinstance(variant, str) and variant else None)
    return DEFAULT_PLATFORM
