"""``r8imfs cat IMAGE PATH``: a file's bytes to stdout, streamed."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from r8imfs import _threads
from r8imfs.cli import _image


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "cat",
        help="write a file of an image to stdout, no mount needed",
        description="Writes the bytes of PATH (a file in the image's merged root filesystem)\n"
        "to stdout, in 4 MiB pieces as they arrive: a multi-GB file is never held in\n"
        "memory. Symlinks are followed within the image.\n\n" + _image.NO_FUSE,
        epilog="examples:\n"
        "  r8imfs cat r8.im/user/model /src/cog.yaml\n"
        "  r8imfs cat r8.im/user/model /etc/os-release | grep VERSION\n"
        "  r8imfs cat IMAGE /src/weights/model.safetensors | sha256sum",
        formatter_class=_image.formatter(),
    )
    p.add_argument("image", help="image reference, e.g. r8.im/user/model:tag")
    p.add_argument("path", help="path of a file in the image")
    _image.add_cache_options(p)
    p.set_defaults(run=run)
    return p


async def run(args: argparse.Namespace) -> None:
    from r8imfs.ops.browse import chunks, readable, resolve

    out = sys.stdout.buffer
    async with _image.opened(args, args.image, _image.board(args)) as files:
        node = readable(resolve(files.rootfs, args.path, follow=True))
        try:
            async for data in chunks(files, node):
                await _threads.run_io(out.write, data)
            await _threads.run_io(out.flush)
        except BrokenPipeError:
            # The reader went away (`| head`): exit quietly, and keep Python
            # from complaining when it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise
