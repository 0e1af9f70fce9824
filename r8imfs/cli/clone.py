"""``r8imfs clone --base IMAGE --dest REF``."""

from __future__ import annotations

import argparse
from typing import Any

from r8imfs.cli import _common


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "clone",
        help="copy an image to a new name by registry mounts",
        description="Copies an image to --dest, mounting its layers (label cloned=true). "
        "Prints REPOSITORY@sha256:DIGEST of the copy.",
    )
    p.add_argument("--base", required=True, help="source image reference")
    p.add_argument("--dest", required=True, help="destination reference")
    p.add_argument(
        "--all-platforms",
        action="store_true",
        help="with a multi-platform source, copy every platform and push an index",
    )
    p.set_defaults(run=run)
    return p


async def run(args: argparse.Namespace) -> None:
    from r8imfs.ops.clone import CloneOptions, clone

    base = _common.ref(args, args.base)
    dest = _common.destination(args, base, args.dest, "cloned")
    ctx = _common.context(args)
    opts = CloneOptions(platform=_common.platform(args), all_platforms=args.all_platforms)
    async with _common.client(args) as client:
        pushed = await clone(client, base, dest, opts, ctx)
    _common.finish(ctx, pushed)
