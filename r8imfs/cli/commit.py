"""``r8imfs commit MOUNTPOINT --dest REF``: a writable mount's changes as one new layer."""

from __future__ import annotations

import argparse
from typing import Any

from r8imfs.cli import _common
from r8imfs.engine.tarcheck import DEFAULT_PREFIX
from r8imfs.engine.upper import UpperDir
from r8imfs.errors import UsageError
from r8imfs.fs import daemon, mountstate
from r8imfs.oci.reference import Reference


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "commit",
        help="push the changes of a writable mount as one new layer on its image",
        description="Tars the changes of a `mount --writable` (new and changed files, "
        "whiteouts for deletions, opaque markers for replaced directories) into one layer "
        "and pushes the mounted image plus that layer as REF. The image's own layers are "
        "mounted across repositories, never downloaded. As with affix, changes outside "
        "src/weights/ are refused unless --allow-overwrite. The mount keeps serving the "
        "same tree; the changes stay in its upper directory (each commit holds all of "
        "them, on the image as mounted). Prints REPOSITORY@sha256:DIGEST of the new image.",
    )
    p.add_argument("mountpoint", help="a mount made with `r8imfs mount --writable`")
    p.add_argument("--dest", required=True, help="destination reference, e.g. r8.im/user/model")
    p.add_argument("-m", "--message", help="history comment of the new layer")
    p.add_argument(
        "--zstd",
        action="store_true",
        help="a zstd:chunked layer, lazily readable with its TOC (default: gzip)",
    )
    p.add_argument(
        "--weights-prefix",
        default=DEFAULT_PREFIX,
        help=f"directory the changes may touch (default: {DEFAULT_PREFIX})",
    )
    p.add_argument(
        "--allow-overwrite",
        action="store_true",
        help="allow changes outside the weights prefix (they replace or delete image files)",
    )
    _common.add_level(p)
    p.set_defaults(run=run)
    return p


def find_upper(mountpoint: str) -> tuple[UpperDir, str]:
    """The upper directory of the writable r8imfs mount at ``mountpoint``, and its image."""
    fstype = daemon.mounted_fstype(mountpoint)
    if fstype is None:
        raise UsageError(f"{mountpoint} is not mounted")
    if fstype != f"fuse.{daemon.FSNAME}":
        raise UsageError(f"{mountpoint} is a {fstype} mount, not an r8imfs one")
    state = mountstate.read(daemon.resolved(mountpoint))
    if state is None:
        raise UsageError(
            f"{mountpoint} is a read-only r8imfs mount: nothing can change there to commit",
            hint="mount it with --writable",
        )
    return UpperDir(state.upper), state.image


async def run(args: argparse.Namespace) -> None:
    from r8imfs.ops.commit import CommitOptions, commit

    upper, _ = find_upper(args.mountpoint)
    dest = _common.dest_ref(args, args.dest)
    if dest.digest:
        raise UsageError(f"destination {dest} names a digest; give a repository[:tag]")
    if not dest.tag:
        dest = Reference(dest.repository, "latest", None)
        _common.note(args, f"no tag in the destination: {dest}")
    options = CommitOptions(
        message=args.message,
        zstd=args.zstd,
        weights_prefix=args.weights_prefix,
        allow_overwrite=args.allow_overwrite,
        level=args.level,
    )
    ctx = _common.context(args)
    async with _common.client(args) as client:
        pushed = await commit(client, upper, dest, options, ctx)
    _common.finish(ctx, pushed)
