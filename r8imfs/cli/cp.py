"""``r8imfs cp IMAGE:PATH DEST``: a file or a directory tree out of an image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from r8imfs._units import human_size
from r8imfs.cli import _image
from r8imfs.errors import UsageError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "cp",
        help="copy a file or directory out of an image, no mount needed",
        description="Copies PATH of the image's merged root filesystem to DEST, as `cp -R`\n"
        "would: if DEST is an existing directory, PATH lands inside it under its own\n"
        "name, else it is created as DEST. Modes (less setuid/setgid) and mtimes are\n"
        "kept, symlinks are copied as symlinks (never followed), devices and FIFOs are\n"
        "skipped. Nothing is written outside DEST: names are created relative to\n"
        "directories opened without following symlinks, so neither a symlink in the\n"
        "image nor one already in DEST can redirect a write. Progress goes to stderr.\n\n"
        + _image.NO_FUSE,
        epilog="examples:\n"
        "  r8imfs cp r8.im/user/model:/src/weights ./weights     a directory\n"
        "  r8imfs cp r8.im/user/model:v2:/src/cog.yaml .         a file, into .\n"
        "  r8imfs cp localhost:5000/app@sha256:...:/etc/os-release os-release\n\n"
        "The path follows the last ':/' of IMAGE:PATH (so tags, digests and ports are\n"
        "left alone); start it with '/'.",
        formatter_class=_image.formatter(),
    )
    p.add_argument("source", metavar="IMAGE:PATH", help="image reference, ':', path in the image")
    p.add_argument("dest", metavar="DEST", help="local file or directory")
    _image.add_cache_options(p)
    p.set_defaults(run=run)
    return p


def split_source(text: str) -> tuple[str, str]:
    """``IMAGE:PATH`` → (IMAGE, PATH): at the last ':/'; else at the last ':' when
    what follows has a '/' (``model:src/weights``; a tag never has one)."""
    image, sep, path = text.rpartition(":/")
    if sep and image:
        return image, "/" + path
    image, sep, path = text.rpartition(":")
    port_like = "/" not in image  # "host:5000/repo": a port, not a path
    if not sep or not image or "/" not in path or port_like:
        raise UsageError(
            f"{text!r} names no path in the image",
            hint="write IMAGE:/PATH, e.g. r8.im/user/model:/src/weights",
        )
    return image, path


async def run(args: argparse.Namespace) -> None:
    from r8imfs.ops.browse import resolve
    from r8imfs.ops.copyout import copy_out

    image, path = split_source(args.source)
    bars = _image.board(args)
    async with _image.opened(args, image, bars) as files:
        top = resolve(files.rootfs, path, follow=False)
        done = await copy_out(files, top, Path(args.dest), bars, label=f"copying {path}")
    if not args.quiet:
        parts = [f"{done.files} files ({human_size(done.bytes)})"]
        if done.dirs:
            parts.append(f"{done.dirs} directories")
        if done.symlinks:
            parts.append(f"{done.symlinks} symlinks")
        print(f"copied {', '.join(parts)} to {done.target}", file=sys.stderr)
        for skipped in done.skipped:
            print(f"skipped {skipped}", file=sys.stderr)
