"""``r8imfs affix --base IMAGE --dest REF --tar FILE`` (alias ``add-layer``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from r8imfs.cli import _common
from r8imfs.engine.tarcheck import DEFAULT_PREFIX
from r8imfs.errors import UsageError
from r8imfs.ops.affix import DEFAULT_COMMENT, DEFAULT_CREATED_BY, AffixOptions, affix
from r8imfs.ops.layerstream import spool


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "affix",
        aliases=["add-layer"],
        help="add a tar as a new layer on top of an image, without pulling its layers",
        description="Appends FILE (a tar of files under src/weights/) as a new gzip layer. "
        "The base's layers are mounted, never downloaded. The tar is checked before "
        "anything is pushed: no absolute paths or '..', nothing outside src/weights/ "
        "unless --allow-overwrite. Prints REPOSITORY@sha256:DIGEST of the new image.",
    )
    p.add_argument(
        "positional", nargs="*", metavar="IMAGE [TAR]", help="original form: IMAGE LAYER.tar"
    )
    p.add_argument("--base", help="base image reference, e.g. r8.im/user/model@sha256:...")
    p.add_argument(
        "--dest",
        help="destination reference, e.g. r8.im/user/model (default: the base's repository, "
        "tag <tag>-affixed)",
    )
    p.add_argument("--tar", help="tar file to append as a new layer ('-' reads stdin)")
    p.add_argument(
        "--created-by",
        default=DEFAULT_CREATED_BY,
        help=f"history created_by of the new layer (default: {DEFAULT_CREATED_BY!r})",
    )
    p.add_argument(
        "--comment",
        default=DEFAULT_COMMENT,
        help=f"history comment of the new layer (default: {DEFAULT_COMMENT!r})",
    )
    p.add_argument(
        "--weights-prefix",
        default=DEFAULT_PREFIX,
        help=f"directory the tar may write into (default: {DEFAULT_PREFIX})",
    )
    p.add_argument(
        "--allow-overwrite",
        action="store_true",
        help="allow files outside the weights prefix (they replace the image's files)",
    )
    p.add_argument(
        "--all-platforms",
        action="store_true",
        help="with a multi-platform base, add the layer to every platform and push an index",
    )
    _common.add_level(p)
    p.set_defaults(run=run)
    return p


def _base_and_tar(args: argparse.Namespace) -> tuple[str, str]:
    positional: list[str] = list(args.positional)
    if len(positional) > 2:
        raise UsageError("too many arguments: expected IMAGE [TAR]")
    base = args.base or (positional.pop(0) if positional else None)
    tar = args.tar or (positional.pop(0) if positional else None)
    if positional:
        raise UsageError("give the image and tar either as arguments or as --base/--tar")
    if not base or not tar:
        raise UsageError(
            "affix needs a base image and a tar",
            hint="r8imfs affix --base IMAGE --dest REF --tar FILE, or r8imfs add-layer IMAGE FILE",
        )
    return base, tar


def options(args: argparse.Namespace) -> AffixOptions:
    return AffixOptions(
        created_by=args.created_by,
        comment=args.comment,
        weights_prefix=args.weights_prefix,
        allow_overwrite=args.allow_overwrite,
        platform=_common.platform(args),
        all_platforms=args.all_platforms,
        level=args.level,
    )


async def run(args: argparse.Namespace) -> None:
    base_text, tar = _base_and_tar(args)
    base = _common.ref(args, base_text)
    dest = _common.destination(args, base, args.dest, "affixed")
    ctx = _common.context(args)
    opts = options(args)
    async with _common.client(args) as client:
        if tar == "-":
            if sys.stdin.isatty():
                raise UsageError("--tar - reads the tar from stdin, which is a terminal")
            async with spool(sys.stdin.buffer) as path:
                pushed = await affix(client, base, dest, path, opts, ctx, tar_name="stdin")
        else:
            path = Path(tar)
            if not path.is_file():
                raise UsageError(f"{tar}: no such file")
            pushed = await affix(client, base, dest, path, opts, ctx)
    _common.finish(ctx, pushed)
