"""``r8imfs remix --base IMAGE --weights IMAGE --dest REF``."""

from __future__ import annotations

import argparse
from typing import Any

from r8imfs.cli import _common


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "remix",
        help="put the weights layers of one image on top of another",
        description="Appends the weights layers of --weights (history ending ' # weights' or "
        "comment 'weights'; else its COPY . /src layers) to --base, with their history, by "
        "registry mounts: within one registry no layer is downloaded or uploaded. "
        "Prints REPOSITORY@sha256:DIGEST of the new image.",
    )
    p.add_argument("--base", required=True, help="image to build on")
    p.add_argument("--weights", required=True, help="image whose weights layers to take")
    p.add_argument("--dest", required=True, help="destination reference")
    p.add_argument(
        "--replace-weights",
        action="store_true",
        help="drop the base's own weights layers first",
    )
    p.set_defaults(run=run)
    return p


async def run(args: argparse.Namespace) -> None:
    from r8imfs.ops.remix import RemixOptions, remix

    base = _common.ref(args, args.base)
    weights = _common.ref(args, args.weights)
    dest = _common.destination(args, base, args.dest, "remixed")
    ctx = _common.context(args)
    opts = RemixOptions(replace_weights=args.replace_weights, platform=_common.platform(args))
    async with _common.client(args) as client:
        pushed = await remix(client, base, weights, dest, opts, ctx)
    _common.finish(ctx, pushed)
