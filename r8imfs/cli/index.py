"""``r8imfs index IMAGE [DEST]``: publish SOCI indexes (zTOCs) for an image."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from r8imfs.cli import _common
from r8imfs.errors import UsageError

if TYPE_CHECKING:
    from r8imfs.ops.index import IndexOptions


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "index",
        help="publish SOCI indexes so gzip layers can be read lazily",
        description="Builds a SOCI zTOC (file TOC, gzip checkpoints every span, a sha256 per "
        "compressed span) for every gzip and uncompressed layer, and publishes it the SOCI v2 "
        "way: a SOCI index per platform, the image manifest annotated with its digest, both in "
        "an OCI image index at DEST. Layers and config are not uploaded. Every platform of a "
        "multi-platform image is indexed, or only --platform when given. "
        "Prints REPOSITORY@sha256:DIGEST of the new image index.",
    )
    p.add_argument("image", help="source image reference")
    p.add_argument(
        "dest", nargs="?", help="destination (default: <tag>-soci in the same repository)"
    )
    p.add_argument(
        "--span-size",
        type=_common.parse_size,
        help="uncompressed bytes between checkpoints (default 4M, SOCI's)",
    )
    p.add_argument(
        "--min-layer-size",
        type=_common.parse_size,
        default=None,
        help="skip layers smaller than this (soci create skips under 10M; default: none)",
    )
    p.add_argument("--jobs", type=int, default=2, help="layers indexed at once (default 2)")
    p.set_defaults(run=run)
    return p


def _platform_given(argv: list[str]) -> bool:
    """Whether --platform was on the command line (its global default means "all" here)."""
    return any(a == "--platform" or a.startswith("--platform=") for a in argv)


def options(args: argparse.Namespace, argv: list[str]) -> IndexOptions:
    from r8imfs.engine.codecs.zran import SPAN_SIZE
    from r8imfs.ops.index import IndexOptions

    if args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    return IndexOptions(
        platform=_common.platform(args) if _platform_given(argv) else None,
        span_size=args.span_size or SPAN_SIZE,
        min_layer_size=args.min_layer_size or 0,
        jobs=args.jobs,
    )


async def run(args: argparse.Namespace) -> None:
    from r8imfs.ops.index import index_image

    image = _common.ref(args, args.image)
    dest = _common.destination(args, image, args.dest, "soci")
    ctx = _common.context(args)
    opts = options(args, sys.argv[1:])
    async with _common.client(args) as client:
        pushed = await index_image(client, image, dest, opts, ctx)
    _common.finish(ctx, pushed)
