"""``r8imfs umount MOUNTPOINT``."""

from __future__ import annotations

import argparse
from typing import Any

from r8imfs.cli import _common


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "umount",
        help="unmount an r8imfs mount and wait for its daemon to exit",
    )
    p.add_argument("mountpoint", help="where the image is mounted")
    p.set_defaults(run=run)
    return p


async def run(args: argparse.Namespace) -> None:
    raise _common.not_built("umount", 4)
