"""``affix``: a tar on top of an image as one new gzip layer; base layers never move.

Order, so that a failure leaves nothing under the tag: check the tar (before
any request that writes), read the base's manifest(s) and config(s), stream
the tar up as a gzip blob, place the base's layers in the destination (HEAD,
mount, copy only across registries), then configs and manifests, the tag
last.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from r8imfs._threads import run_io, run_sync
from r8imfs._units import human_size
from r8imfs.engine import tarcheck
from r8imfs.oci import mutate
from r8imfs.oci.digest import short
from r8imfs.oci.manifest import Descriptor, Platform
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
from r8imfs.ops.layerstream import DEFAULT_LEVEL, upload_tar_as_gzip
from r8imfs.registry.client import RegistryClient

#: What the original r8im wrote as the history of an affixed layer.
DEFAULT_CREATED_BY = "cp . /src/weights # weights"
DEFAULT_COMMENT = "weights"


@dataclass(frozen=True, slots=True)
class AffixOptions:
    created_by: str = DEFAULT_CREATED_BY
    comment: str = DEFAULT_COMMENT
    weights_prefix: str = tarcheck.DEFAULT_PREFIX
    allow_overwrite: bool = False
    platform: Platform | None = None
    all_platforms: bool = False
    level: int = DEFAULT_LEVEL


def check_tar(path: Path, options: AffixOptions) -> tarcheck.TarSummary:
    with path.open("rb") as f:
        return tarcheck.check(
            f,
            prefix=options.weights_prefix,
            allow_overwrite=options.allow_overwrite,
            what=str(path),
        )


async def affix(
    client: RegistryClient,
    base: Reference,
    dest: Reference,
    tar: Path,
    options: AffixOptions,
    ctx: Context,
    *,
    tar_name: str | None = None,
) -> Pushed:
    name = tar_name or str(tar)
    summary = await run_sync(check_tar, tar, options)
    ctx.notify(f"{name}: {summary.files} file(s), {human_size(summary.file_bytes)}; checked")
    source = await load_source(
        client, base, platform=options.platform, all_platforms=options.all_platforms, ctx=ctx
    )
    size = (await run_io(tar.stat)).st_size
    bar = ctx.progress.bar(f"layer {name}", size)
    try:
        layer = await upload_tar_as_gzip(
            client, dest.repository, tar, level=options.level, progress=bar.advance
        )
    finally:
        bar.finish()
    ctx.notify(
        f"new layer {short(layer.blob.digest)}: {human_size(layer.tar_size)} tar, "
        f"{human_size(layer.blob.size)} gzip"
    )
    images = []
    for child in source.children:
        mtype = child.manifest.media_type
        blob = Descriptor(mutate.layer_type_for(mtype, "gzip"), layer.blob.digest, layer.blob.size)
        new = mutate.NewLayer(blob, layer.diff_id, options.created_by, options.comment or None)
        config = mutate.append_layers(child.config.data, [new])
        layers = [*child.manifest.layers, blob]
        images.append(NewImage(mtype, config, layers, child.entry, manifest_annotations(child)))
    await place_blobs(client, dest.repository, needed_layers(source, base.repository), ctx)
    return await push_images(client, dest, source, images)
