"""``r8imfs zstd IMAGE [DEST]`` (alias ``recompress``)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from r8imfs.cli import _common
from r8imfs.errors import UsageError

if TYPE_CHECKING:
    from r8imfs.ops.zstd import ZstdOptions


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "zstd",
        aliases=["recompress"],
        help="recompress the layers of an image with zstd",
        description="Recompresses every layer that is not zstd yet as seekable zstd "
        "(independent frames plus the seekable format's seek table: any zstd decoder reads "
        "it, a lazy reader can seek in it); layers stream through, never whole in memory. "
        "diff_ids are unchanged and verified; the manifest becomes OCI. "
        "Prints REPOSITORY@sha256:DIGEST of the new image.",
    )
    p.add_argument("image", help="source image reference")
    p.add_argument(
        "dest", nargs="?", help="destination (default: <tag>-zstd in the same repository)"
    )
    p.add_argument("--dest", dest="dest_flag", metavar="DEST", help="destination, as a flag")
    p.add_argument("--level", type=int, default=3, help="zstd level, 1-22 (default 3)")
    p.add_argument(
        "--all-platforms",
        action="store_true",
        help="with a multi-platform image, recompress every platform and push an index",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="compression threads per layer (default: CPUs, 2 to 4)",
    )
    p.add_argument("--jobs", type=int, default=2, help="layers in flight at once (default 2)")
    p.add_argument(
        "--frame-size",
        type=_common.parse_size,
        help="uncompressed bytes per zstd frame, the unit a lazy reader seeks to (default 2M)",
    )
    p.set_defaults(run=run)
    return p


def options(args: argparse.Namespace) -> ZstdOptions:
    from r8imfs.ops.zstd import ZstdOptions

    default = ZstdOptions()  # --threads and --frame-size: the operation's defaults
    threads = default.threads if args.threads is None else args.threads
    if not 1 <= args.level <= 22:
        raise UsageError(f"--level {args.level}: zstd levels are 1 to 22")
    if threads < 1 or args.jobs < 1:
        raise UsageError("--threads and --jobs must be at least 1")
    return ZstdOptions(
        level=args.level,
        platform=_common.platform(args),
        all_platforms=args.all_platforms,
        frame_size=args.frame_size or default.frame_size,
        threads=threads,
        jobs=args.jobs,
    )


async def run(args: argparse.Namespace) -> None:
    if args.dest and args.dest_flag:
        raise UsageError("give the destination once: as an argument or with --dest")
    image = _common.ref(args, args.image)
    dest = _common.destination(args, image, args.dest or args.dest_flag, "zstd")
    ctx = _common.context(args)
    opts = options(args)
    from r8imfs.ops.zstd import recompress_image

    async with _common.client(args) as client:
        pushed = await recompress_image(client, image, dest, opts, ctx)
    _common.finish(ctx, pushed)
