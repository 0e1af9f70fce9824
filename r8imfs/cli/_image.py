"""What ``ls``, ``cat``, ``cp`` and ``tensors`` share: the cache options and opening an image."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from r8imfs._units import human_size, parse_size
from r8imfs.cache.blobcache import DEFAULT_MAX_BYTES, default_cache_dir
from r8imfs.cli import _common
from r8imfs.cli.progress import TerminalTransfers
from r8imfs.ops.progress import Transfers

if TYPE_CHECKING:
    from r8imfs.image.image import ImageFiles

NO_FUSE = (
    "No FUSE is needed: the image is read with the same engine, cache and digest\n"
    "checks as `r8imfs mount` (layers are indexed once, then reused from the cache;\n"
    "a gzip layer is decoded once and kept as a decoded copy), so it works in a\n"
    "container without /dev/fuse and on machines without FUSE."
)


def add_cache_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", help="cache directory (default: $XDG_CACHE_HOME/r8imfs)")
    p.add_argument(
        "--cache-size",
        default=None,
        help=f"bound on the cache (default: {human_size(DEFAULT_MAX_BYTES)})",
    )


def board(args: argparse.Namespace) -> Transfers:
    """Bars on stderr when it is a terminal; none with -q."""
    return TerminalTransfers.terminal(bool(getattr(args, "quiet", False)))


@contextlib.asynccontextmanager
async def opened(
    args: argparse.Namespace, image: str, bars: Transfers, *, sparse: bool = False
) -> AsyncIterator[ImageFiles]:
    from r8imfs.ops.browse import CacheOptions, open_image

    cache = CacheOptions(
        Path(args.cache_dir) if args.cache_dir else default_cache_dir(),
        parse_size(args.cache_size) if args.cache_size else DEFAULT_MAX_BYTES,
        sparse=sparse,
    )
    try:
        async with (
            _common.client(args) as client,
            open_image(
                client, _common.ref(args, image), _common.platform(args), cache, bars
            ) as files,
        ):
            yield files
    finally:
        bars.close()


def formatter() -> Any:
    return argparse.RawDescriptionHelpFormatter
