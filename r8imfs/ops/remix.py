"""``remix``: the weights layers of one image on top of another, by mounts only.

The weights layers are those marked by r8im's convention (history comment
``weights`` or ``created_by`` ending `` # weights``); an image with none
falls back on ``extract``'s rule (``COPY . /src`` layers). They keep their
diff_ids and history entries. Within one registry no layer byte moves:
every blob is mounted into the destination.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from r8imfs.errors import NoWeightsFound, UnsupportedMediaType
from r8imfs.oci import mediatypes as mt
from r8imfs.oci import mutate
from r8imfs.oci.config import ImageConfig, Layer, pair_layers, weights_candidates
from r8imfs.oci.digest import short
from r8imfs.oci.manifest import Descriptor, Platform
from r8imfs.oci.reference import Reference
from r8imfs.ops.common import (
    Child,
    Context,
    Needed,
    NewImage,
    Pushed,
    load_source,
    manifest_annotations,
    place_blobs,
    push_images,
)
from r8imfs.registry.client import RegistryClient


@dataclass(frozen=True, slots=True)
class RemixOptions:
    replace_weights: bool = False
    platform: Platform | None = None


def weights_layers(child: Child, ref: Reference, ctx: Context) -> list[Layer]:
    marked, copy_src = weights_candidates(pair_layers(child.manifest, child.config))
    if marked:
        return marked
    if copy_src:
        ctx.notify(
            f"no layer of {ref} is marked as weights: taking its COPY . /src layer(s), "
            "as `extract` does (they may carry code as well)"
        )
        return copy_src
    raise NoWeightsFound(
        f"{ref} has no weights layer (history ending ' # weights', comment 'weights', "
        "or COPY . /src)"
    )


def producing_history(config: ImageConfig) -> list[dict[str, Any]]:
    """History entries that made a layer, in layer order (raw JSON)."""
    return [h for h in config.data.get("history") or [] if not h.get("empty_layer")]


def remixed(base: Child, weights: Child, taken: list[Layer], replace: bool) -> NewImage:
    """The new image: base (minus its weights if ``replace``) plus ``taken``."""
    dropped = {x.index for x in pair_layers(base.manifest, base.config) if x.is_weights}
    dropped = dropped if replace else set()
    history = producing_history(weights.config)
    additions = []
    for layer in taken:
        if layer.diff_id is None:
            raise UnsupportedMediaType(f"weights layer {layer.descriptor.digest} has no diff_id")
        entry = history[layer.index] if layer.index < len(history) else None
        additions.append((layer.diff_id, entry))
    config = mutate.append_history(mutate.drop_layers(base.config.data, dropped), additions)
    kept = [d for i, d in enumerate(base.manifest.layers) if i not in dropped]
    new = [x.descriptor for x in taken]
    mtype = base.manifest.media_type
    if mt.is_docker(mtype) and any(d.media_type in mt.ZSTD_LAYERS for d in new):
        mtype = mt.OCI_MANIFEST  # zstd has no Docker media type
    layers = [_as(d, mtype) for d in [*kept, *new]]
    return NewImage(mtype, config, layers, None, manifest_annotations(base))


def _as(d: Descriptor, manifest_type: str) -> Descriptor:
    media_type = mutate.convert_layer_type(d.media_type, manifest_type)
    return Descriptor(media_type, d.digest, d.size, None, d.annotations, d.urls)


async def remix(
    client: RegistryClient,
    base: Reference,
    weights: Reference,
    dest: Reference,
    options: RemixOptions,
    ctx: Context,
) -> Pushed:
    base_src = await load_source(
        client, base, platform=options.platform, all_platforms=False, ctx=ctx
    )
    weights_src = await load_source(
        client, weights, platform=options.platform, all_platforms=False, ctx=ctx
    )
    base_child, weights_child = base_src.children[0], weights_src.children[0]
    taken = weights_layers(weights_child, weights, ctx)
    image = remixed(base_child, weights_child, taken, options.replace_weights)
    ctx.notify(
        f"taking {len(taken)} layer(s) from {weights}: "
        + ", ".join(short(x.descriptor.digest) for x in taken)
    )
    needed = [Needed(d, (base.repository,)) for d in base_child.manifest.layers]
    needed += [Needed(x.descriptor, (weights.repository,)) for x in taken]
    keep = {d.digest for d in image.layers}
    needed = [n for n in needed if n.descriptor.digest in keep]
    await place_blobs(client, dest.repository, needed, ctx)
    return await push_images(client, dest, base_src, [image])
