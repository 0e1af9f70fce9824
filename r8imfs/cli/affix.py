"""``r8imfs affix --base IMAGE --dest REF --tar FILE`` (alias ``add-layer``)."""

from __future__ import annotations

import argparse
from typing import Any

from r8imfs.cli import _common


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "affix",
        aliases=["add-layer"],
        help="add a tar as a new layer on top of an image, without pulling its layers",
        description="Appends FILE (a tar of files under src/weights/) as a new gzip layer. "
        "The base's layers are mounted, never downloaded.",
    )
    p.add_argument("positional", nargs="*", metavar="IMAGE [TAR]", help="original form: IMAGE LAYER.tar")
    p.add_argument("--base", help="base image reference, e.g. r8.im/user/model@sha256:...")
    p.add_argument("--dest", help="destination reference, e.g. r8.im/user/model")
    p.add_argument("--tar", help="tar file to append as a new layer ('-' reads stdin)")
    p.set_defaults(run=run)
    return p


async def run(args: argparse.Namespace) -> None:
    raise _common.not_built("affix", 6)
