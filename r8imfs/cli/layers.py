"""``r8imfs layers IMAGE [--json]`` (alias ``report``): one row per layer."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from r8imfs._units import human_size
from r8imfs.cli import _common
from r8imfs.oci.config import pair_layers
from r8imfs.oci.digest import short
from r8imfs.registry.client import Image


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "layers",
        aliases=["report"],
        help="summarize the layers of an image",
        description="One row per layer: index, digest, size, media type, the build step "
        "that made it (history created_by) and its comment. Only the manifest and config "
        "are fetched.",
    )
    p.add_argument("image", help="image reference, e.g. r8.im/user/model:tag")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.set_defaults(run=run)
    return p


def as_json(image: Image) -> dict[str, Any]:
    return {
        "reference": str(image.reference),
        "digest": image.digest,
        "mediaType": image.manifest.media_type,
        "platform": str(image.platform) if image.platform else None,
        "layers": [
            {
                "index": layer.index,
                "digest": layer.descriptor.digest,
                "size": layer.descriptor.size,
                "mediaType": layer.descriptor.media_type,
                "diffId": layer.diff_id,
                "createdBy": layer.created_by or None,
                "comment": layer.comment or None,
            }
            for layer in pair_layers(image.manifest, image.config)
        ],
    }


def table(image: Image) -> str:
    rows = [("#", "DIGEST", "SIZE", "MEDIA TYPE", "CREATED BY", "COMMENT")]
    for layer in pair_layers(image.manifest, image.config):
        d = layer.descriptor
        created = layer.created_by.replace("\n", " ")
        if len(created) > 70:
            created = created[:67] + "..."
        rows.append(
            (
                str(layer.index),
                short(d.digest),
                human_size(d.size),
                d.media_type.rsplit(".", 1)[-1] if "." in d.media_type else d.media_type,
                created,
                layer.comment,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    total = sum(x.size for x in image.manifest.layers)
    header = f"{image.reference}\n{image.manifest.media_type}  platform {image.platform}"
    return f"{header}\n" + "\n".join(lines) + f"\n{len(rows) - 1} layers, {human_size(total)}"


async def run(args: argparse.Namespace) -> None:
    ref = _common.ref(args, args.image)
    async with _common.client(args) as client:
        image = await client.resolve(ref, _common.platform(args))
    if args.json:
        json.dump(as_json(image), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(table(image))
