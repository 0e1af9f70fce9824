"""``r8imfs remix --base IMAGE --weights IMAGE --dest REF``."""

from __future__ import annotations

import argparse
from typing import Any

from r8imfs.cli import _common


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "remix",
        help="put the weights layers of one image on top of another",
        description="Appends the weights layers of --weights to --base, by registry mounts.",
    )
    p.add_argument("--base", required=True, help="image to build on")
    p.add_argument("--weights", required=True, help="image whose weights layers to take")
    p.add_argument("--dest", required=True, help="destination reference")
    p.set_defaults(run=run)
    return p


async def run(args: argparse.Namespace) -> None:
    raise _common.not_built("remix", 6)
