"""What the writing operations share: sources, destinations, blob placement, pushing.

An operation reads a ``Source`` (one image manifest, or every image of an
index with ``all_platforms``), transforms each ``Child`` into a ``NewImage``
(pure work in ``oci.mutate``), makes every blob present in the destination
with ``place_blobs`` (HEAD, mount, copy only across registries) and then
``push_images``: child manifests by digest, the index last under the tag.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from r8imfs._units import human_size
from r8imfs.errors import UnsupportedMediaType, UsageError
from r8imfs.oci import mediatypes as mt
from r8imfs.oci.config import ImageConfig
from r8imfs.oci.digest import short
from r8imfs.oci.manifest import DEFAULT_PLATFORM, Descriptor, Index, Manifest, Platform
from r8imfs.oci.reference import Reference, Repository
from r8imfs.ops._tasks import gather
from r8imfs.ops.progress import Bar, Transfers
from r8imfs.registry.client import MAX_CONFIG, RegistryClient
from r8imfs.registry.push import push_image_manifest, push_index
from r8imfs.registry.upload import ensure_blob

Notify = Callable[[str], None]
#: Blob placements (HEAD/mount/copy) in flight at once.
PLACE_CONCURRENCY = 8
#: The annotation buildx puts on attestation manifests in an index.
REFERENCE_TYPE = "vnd.docker.reference.type"


def _quiet(message: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Context:
    """How an operation talks back: notes and progress bars."""

    notify: Notify = _quiet
    progress: Transfers = field(default_factory=Transfers)


@dataclass(frozen=True, slots=True)
class Pushed:
    """The image an operation wrote; ``str()`` is what the CLI prints last."""

    repository: Repository
    digest: str
    tag: str | None

    def __str__(self) -> str:
        return f"{self.repository}@{self.digest}"


@dataclass(frozen=True, slots=True)
class Child:
    """One image manifest of the source; ``entry`` is its index entry, if any."""

    manifest: Manifest
    config: ImageConfig
    entry: Descriptor | None = None


@dataclass(frozen=True, slots=True)
class Source:
    ref: Reference
    children: tuple[Child, ...]
    index: Index | None = None  # set when every platform of an index is rewritten


@dataclass(frozen=True, slots=True)
class NewImage:
    """A transformed child, ready to push once its blobs are in place."""

    manifest_type: str
    config: dict[str, Any]
    layers: list[Descriptor]
    entry: Descriptor | None = None
    annotations: dict[str, str] | None = None


# -- destinations ---------------------------------------------------------------


def choose_destination(
    source: Reference, dest: Reference | None, suffix: str
) -> tuple[Reference, str | None]:
    """Where to write, and a note to show: never the source's tag unless named.

    No destination: the source's repository, tag ``<tag>-<suffix>``, where a
    source given only by digest counts as tag ``latest``. A destination
    without a tag is tagged ``latest`` (as docker and the original r8im do),
    unless that is the source's own tag, which only an explicit tag may
    overwrite.
    """
    if dest is None:
        base_tag = source.tag or "latest"
        tag = f"{base_tag}-{suffix}"
        if len(tag) > 128:
            raise UsageError(f"tag {tag!r} would be too long; give a destination")
        why = "" if source.tag else " (the source has only a digest, so its tag counts as latest)"
        target = source.repository
        return Reference(target, tag, None), f"no destination given: writing {target}:{tag}{why}"
    if dest.digest:
        raise UsageError(f"destination {dest} names a digest; give a repository[:tag]")
    if dest.tag:
        return dest, None
    if dest.repository == source.repository and source.tag == "latest":
        raise UsageError(
            f"destination {dest.repository} would overwrite the source's tag latest",
            hint=f"name it explicitly ({dest.repository}:latest) if that is what you want",
        )
    return Reference(dest.repository, "latest", None), f"no tag in the destination: {dest}:latest"


# -- reading the source -------------------------------------------------------------


def is_attestation(entry: Descriptor) -> bool:
    return (entry.annotations or {}).get(REFERENCE_TYPE) == "attestation-manifest"


async def load_source(
    client: RegistryClient,
    ref: Reference,
    *,
    platform: Platform | None,
    all_platforms: bool,
    ctx: Context,
) -> Source:
    """The manifests to transform: one platform, or each image of an index."""
    top = await client.get_manifest(ref)
    if isinstance(top, Manifest):
        return Source(ref, (await _child(client, ref, top, None),))
    if not all_platforms:
        chosen = top.select(platform or DEFAULT_PLATFORM)
        ctx.notify(
            f"{ref} is a multi-platform index: using {chosen.platform} only "
            "(--all-platforms rewrites every platform)"
        )
        return Source(ref, (await _load_child(client, ref, chosen, keep_entry=False),))
    children = []
    for entry in top.manifests:
        if is_attestation(entry):
            ctx.notify(f"dropping attestation manifest {short(entry.digest)}: it would be stale")
            continue
        children.append(await _load_child(client, ref, entry, keep_entry=True))
    if not children:
        raise UnsupportedMediaType(f"index {ref} lists no image manifests")
    return Source(ref, tuple(children), top)


async def _load_child(
    client: RegistryClient, ref: Reference, entry: Descriptor, keep_entry: bool
) -> Child:
    manifest = await client.get_manifest(ref.with_digest(entry.digest))
    if not isinstance(manifest, Manifest):
        raise UnsupportedMediaType(f"index entry {entry.digest} of {ref} is not an image manifest")
    return await _child(client, ref, manifest, entry if keep_entry else None)


async def _child(
    client: RegistryClient, ref: Reference, manifest: Manifest, entry: Descriptor | None
) -> Child:
    raw = await client.get_blob(ref.repository, manifest.config.digest, MAX_CONFIG)
    return Child(manifest, ImageConfig.parse(raw), entry)


# -- blobs -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Needed:
    """A blob the destination needs, and the repositories that have it."""

    descriptor: Descriptor
    sources: tuple[Repository, ...]


async def place_blobs(
    client: RegistryClient, dest: Repository, needed: list[Needed], ctx: Context
) -> None:
    """Make every blob present in ``dest``: HEAD, else mount, else copy (other registry)."""
    unique: dict[str, Needed] = {}
    for n in needed:
        unique.setdefault(n.descriptor.digest, n)

    async def place(n: Needed) -> str:
        d = n.descriptor
        bars: list[Bar] = []  # a bar only once bytes move (a copy), not for HEAD/mount

        def advance(count: int) -> None:
            if not bars:
                bars.append(ctx.progress.bar(f"copy {short(d.digest)}", d.size))
            bars[0].advance(count)

        try:
            up = await ensure_blob(client, dest, d.digest, list(n.sources), progress=advance)
        finally:
            for bar in bars:
                bar.finish()
        return up.how

    hows = await gather([partial(place, n) for n in unique.values()], PLACE_CONCURRENCY)
    counts = {how: hows.count(how) for how in ("exists", "mounted", "uploaded")}
    copied = sum(
        n.descriptor.size for n, how in zip(unique.values(), hows, strict=True) if how == "uploaded"
    )
    if unique:
        ctx.notify(
            f"{len(unique)} blob(s) in {dest}: {counts['exists']} already there, "
            f"{counts['mounted']} mounted, {counts['uploaded']} copied ({human_size(copied)})"
        )


# -- pushing -------------------------------------------------------------------------


async def push_images(
    client: RegistryClient, dest: Reference, source: Source, images: list[NewImage]
) -> Pushed:
    """Push the new manifest (or children by digest, then the index) under ``dest``."""
    repo = dest.repository
    if source.index is None:
        (image,) = images
        desc = await push_image_manifest(
            client,
            dest,
            image.manifest_type,
            image.config,
            image.layers,
            annotations=image.annotations,
        )
        return Pushed(repo, desc.digest, dest.tag)
    entries = []
    untagged = Reference(repo, None, None)
    for image in images:
        desc = await push_image_manifest(
            client,
            untagged,
            image.manifest_type,
            image.config,
            image.layers,
            annotations=image.annotations,
        )
        assert image.entry is not None
        entries.append(
            Descriptor(
                desc.media_type,
                desc.digest,
                desc.size,
                image.entry.platform,
                image.entry.annotations,
            )
        )
    index_type = _index_type(source.index.media_type, [e.media_type for e in entries])
    annotations = source.index.data.get("annotations") or None
    digest = await push_index(client, dest, index_type, entries, annotations=annotations)
    return Pushed(repo, digest, dest.tag)


def _index_type(original: str, children: list[str]) -> str:
    """Keep the index flavour, unless an OCI child forces an OCI index."""
    if original == mt.DOCKER_INDEX and all(c == mt.DOCKER_MANIFEST for c in children):
        return mt.DOCKER_INDEX
    return mt.OCI_INDEX


def needed_layers(source: Source, repo: Repository) -> list[Needed]:
    """Every layer of every child of ``source``, to be found in ``repo``."""
    return [Needed(d, (repo,)) for child in source.children for d in child.manifest.layers]


def manifest_annotations(child: Child) -> dict[str, str] | None:
    value = child.manifest.data.get("annotations")
    return dict(value) if isinstance(value, dict) and value else None
