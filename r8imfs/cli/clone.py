"""``r8imfs clone --base IMAGE --dest REF``."""

from __future__ import annotations

import argparse
from typing import Any

from r8imfs.cli import _common


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "clone",
        help="copy an image to a new name by registry mounts",
        description="Copies an image to --dest, mounting its layers (label cloned=true).",
    )
    p.add_argument("--base", required=True, help="source image reference")
    p.add_argument("--dest", required=True, help="destination reference")
    p.set_defaults(run=run)
    return p


async def run(args: argparse.Namespace) -> None:
    raise _common.not_built("clone", 6)
