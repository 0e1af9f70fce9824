"""``r8imfs extract IMAGE [-o FILE | --dir DIR]``: the weights, as a tar or files."""

from __future__ import annotations

import argparse
from typing import Any

from r8imfs.cli import _common


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "extract",
        help="extract the weights of an image (files under src/weights/) as a tar",
        description="Looks in layers whose build step ends with ' # weights', else those "
        "starting with 'COPY . /src', for regular files under src/weights/, and writes them "
        "(prefix stripped) as a tar. Only those layers are read.",
    )
    p.add_argument("image", help="image reference")
    p.add_argument("-o", "--output", default="-", help="tar file to write ('-': stdout)")
    p.add_argument("--dir", help="write the files into this directory instead of a tar")
    p.set_defaults(run=run)
    return p


async def run(args: argparse.Namespace) -> None:
    raise _common.not_built("extract", 3)
