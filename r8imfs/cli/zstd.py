"""``r8imfs zstd IMAGE [DEST]`` (alias ``recompress``)."""

from __future__ import annotations

import argparse
from typing import Any

from r8imfs.cli import _common


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "zstd",
        aliases=["recompress"],
        help="recompress the layers of an image with zstd",
        description="Recompresses every layer that is not zstd yet, as seekable zstd.",
    )
    p.add_argument("image", help="source image reference")
    p.add_argument("dest", nargs="?", help="destination (default: <tag>-zstd in the same repository)")
    p.add_argument("--level", type=int, default=3, help="zstd level (default 3)")
    p.set_defaults(run=run)
    return p


async def run(args: argparse.Namespace) -> None:
    raise _common.not_built("zstd", 6)
