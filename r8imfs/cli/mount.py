"""``r8imfs mount IMAGE MOUNTPOINT``: the image as a lazy read-only filesystem."""

from __future__ import annotations

import argparse
from typing import Any

from r8imfs.cli import _common


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "mount",
        help="mount an image as a directory; file bodies are fetched lazily",
        description="MOUNTPOINT/manifest.json, config.json, rootfs/ (merged, whiteouts "
        "applied) and layers/NN-<digest>/ (each layer as stored).",
    )
    p.add_argument("image", help="image reference")
    p.add_argument("mountpoint", help="an empty directory")
    p.add_argument("--foreground", action="store_true", help="stay in front; Ctrl-C unmounts")
    p.add_argument("--cache-dir", help="cache directory (default $XDG_CACHE_HOME/r8imfs)")
    p.add_argument("--allow-other", action="store_true", help="let other users see the mount")
    p.set_defaults(run=run)
    return p


async def run(args: argparse.Namespace) -> None:
    raise _common.not_built("mount", 4)
