"""``clone``: an image under a new name, layers mounted, label ``cloned=true``.

The label (what the original r8im added) changes the config, hence the
manifest digest; the layers are the same blobs, mounted from the source
repository (copied only across registries).
"""

from __future__ import annotations

from dataclasses import dataclass

from r8imfs.oci import mutate
from r8imfs.oci.manifest import Platform
from r8imfs.oci.reference import Reference
from r8imfs.ops.common import (
    Context,
    NewImage,
    Pushed,
    load_source,
    manifest_annotations,
    needed_layers,
    place_blobs,
    push_images,
)
from r8imfs.registry.client import RegistryClient

LABEL = ("cloned", "true")


@dataclass(frozen=True, slots=True)
class CloneOptions:
    platform: Platform | None = None
    all_platforms: bool = False


async def clone(
    client: RegistryClient,
    base: Reference,
    dest: Reference,
    options: CloneOptions,
    ctx: Context,
) -> Pushed:
    source = await load_source(
        client, base, platform=options.platform, all_platforms=options.all_platforms, ctx=ctx
    )
    images = [
        NewImage(
            child.manifest.media_type,
            mutate.set_label(child.config.data, *LABEL),
            list(child.manifest.layers),
            child.entry,
            manifest_annotations(child),
        )
        for child in source.children
    ]
    await place_blobs(client, dest.repository, needed_layers(source, base.repository), ctx)
    return await push_images(client, dest, source, images)
