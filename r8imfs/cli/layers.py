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
        description="One row per layer: index, digest, size, media type, the TOC it has "
        "(a SOCI zTOC listed by the image's SOCI index, v2 or v1), the build step that made "
        "it (history created_by) and its comment. Only the manifest, config and SOCI index "
        "are fetched.",
    )
    p.add_argument("image", help="image reference, e.g. r8.im/user/model:tag")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.set_defaults(run=run)
    return p


Tocs = dict[str, dict[str, object]]


def as_json(image: Image, tocs: Tocs | None = None) -> dict[str, Any]:
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
                "toc": (tocs or {}).get(layer.descriptor.digest),
            }
            for layer in pair_layers(image.manifest, image.config)
        ],
    }


def _toc_cell(toc: dict[str, object] | None) -> str:
    return f"{toc['format']} ({toc['index']})" if toc else "-"


def table(image: Image, tocs: Tocs | None = None) -> str:
    rows = [("#", "DIGEST", "SIZE", "MEDIA TYPE", "TOC", "CREATED BY", "COMMENT")]
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
                _toc_cell((tocs or {}).get(d.digest)),
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
    from r8imfs.image.tocs import listed_tocs, soci_index

    ref = _common.ref(args, args.image)
    async with _common.client(args) as client:
        image = await client.resolve(ref, _common.platform(args))
        tocs = listed_tocs(image.manifest, await soci_index(client, ref.repository, image.manifest))
    if args.json:
        json.dump(as_json(image, tocs), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(table(image, tocs))
