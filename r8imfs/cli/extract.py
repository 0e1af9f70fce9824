"""``r8imfs extract IMAGE [-o FILE | --dir DIR]``: the weights, as a tar or files."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from r8imfs._threads import run_io
from r8imfs._units import human_size
from r8imfs.cli import _common
from r8imfs.errors import UsageError
from r8imfs.fs import process

if TYPE_CHECKING:
    from r8imfs.ops.extract import OnFile
    from r8imfs.registry.client import Image, RegistryClient


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "extract",
        help="extract the weights of an image (files under src/weights/) as a tar",
        description="Looks in layers whose build step ends with ' # weights', else those "
        "starting with 'COPY . /src', for regular files under src/weights/, and writes them "
        "(prefix stripped) as a tar. Only those layers are downloaded, each once, and "
        "checked against its digest. Each file is named on stderr.",
        epilog="examples:\n  r8imfs extract r8.im/user/model -o weights.tar\n"
        "  r8imfs extract r8.im/user/model --dir ./weights\n"
        "  r8imfs extract r8.im/user/model | tar -t",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", help="image reference")
    p.add_argument(
        "-o", "--output", default="-", help="tar file to write ('-': stdout, the default)"
    )
    p.add_argument("--dir", help="write the files into this directory instead of a tar")
    p.add_argument(
        "--no-soci",
        dest="soci",
        action="store_false",
        help="ignore the image's SOCI index (which lets gzip layers inflate on every core)",
    )
    p.set_defaults(run=run, before_trio=before_trio)
    return p


def before_trio(args: argparse.Namespace) -> None:
    """Bound malloc as the mount does: frames and ranges of a few MiB churn
    through the decode threads (``ops.extractunits``)."""
    process.bound_malloc(keep_free=64 * 1024 * 1024)


async def run(args: argparse.Namespace) -> None:
    from r8imfs.ops.extract import DirSink, TarSink, extract

    ref = _common.ref(args, args.image)

    def on_file(name: str, size: int) -> None:
        _common.note(args, f"{name} ({human_size(size)})")

    async with _common.client(args) as client:
        image = await client.resolve(ref, _common.platform(args))
        if args.dir:
            await extract(client, image, DirSink(Path(args.dir)), on_file, soci=args.soci)
        elif args.output == "-":
            if sys.stdout.isatty():
                raise UsageError(
                    "refusing to write a tar to a terminal", hint="use -o FILE, --dir DIR or a pipe"
                )
            sink = TarSink(sys.stdout.buffer)
            try:
                await extract(client, image, sink, on_file, soci=args.soci)
            except BaseException:
                sink.discard(poison=True)
                raise
            await run_io(sink.close)  # waits for its writer thread: not on the loop
            sys.stdout.buffer.flush()
        else:
            await _to_file(client, image, Path(args.output), on_file, args.soci)


async def _to_file(
    client: RegistryClient, image: Image, path: Path, on_file: OnFile, soci: bool
) -> None:
    """Write to a temporary name beside ``path``; rename only on success."""
    from r8imfs.ops.extract import TarSink, extract

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as out:
            sink = TarSink(out)
            try:
                await extract(client, image, sink, on_file, soci=soci)
            except BaseException:
                sink.discard()
                raise
            await run_io(sink.close)  # waits for its writer thread: not on the loop
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
