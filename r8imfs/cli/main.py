"""``r8imfs``: the command line. Parsing and printing only; work happens below.

Global options are accepted before or after the subcommand: each subparser
repeats them with ``default=SUPPRESS``, so a value given first is not
overwritten by the subparser's default.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from types import ModuleType

import trio

from r8imfs import __version__
from r8imfs.cli import (
    _common,
    affix,
    cat,
    clone,
    commit,
    cp,
    extract,
    index,
    layers,
    ls,
    mount,
    remix,
    tensors,
    umount,
    zstd,
)
from r8imfs.errors import R8imfsError
from r8imfs.registry import _tls
from r8imfs.registry._http import widen_socket_reads

COMMANDS: tuple[ModuleType, ...] = (
    layers,
    ls,
    cat,
    cp,
    tensors,
    extract,
    affix,
    remix,
    zstd,
    index,
    clone,
    mount,
    umount,
    commit,
)

DESCRIPTION = """\
Look inside and change container images straight on the registry:
no Docker daemon, no GPU, no full pulls.

examples:
  r8imfs layers r8.im/replicate/hello-world           one row per layer
  r8imfs ls -l r8.im/replicate/hello-world /src      list files, no mount needed
  r8imfs tensors IMAGE                                tensors of src/weights/*.safetensors
  r8imfs cp IMAGE:/src/weights ./weights              copy files out, no mount needed
  r8imfs extract IMAGE -o weights.tar                 pull the weights out
  r8imfs affix --base IMAGE --dest REPO --tar w.tar   put new weights on
  r8imfs mount IMAGE /mnt/img && cp /mnt/img/rootfs/src/weights/* .
  r8imfs mount --writable IMAGE /mnt/img; cp w.bin /mnt/img/rootfs/src/weights/
  r8imfs commit /mnt/img --dest REPO:TAG -m "new weights"

credentials: -t/--token or COG_TOKEN (a Replicate cog token), else the
docker/podman config (~/.docker/config.json, credential helpers), else none.
"""


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    def d(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    g = parser.add_argument_group("global options")
    g.add_argument("-t", "--token", default=d(None), help="Replicate cog token (or COG_TOKEN)")
    g.add_argument(
        "-r",
        "--registry",
        default=d("r8.im"),
        help="registry for references without a host (default: r8.im)",
    )
    g.add_argument(
        "--insecure",
        action="store_true",
        default=d(False),
        help="plain HTTP for a non-loopback registry (loopback always uses HTTP)",
    )
    g.add_argument(
        "--platform",
        default=d("linux/amd64"),
        help="os/arch[/variant] to pick from multi-platform images (default: linux/amd64)",
    )
    g.add_argument(
        "-v", "--verbose", action="count", default=d(0), help="more detail; -vv for HTTP"
    )
    g.add_argument("-q", "--quiet", action="store_true", default=d(False), help="no progress")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r8imfs",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"r8imfs {__version__}")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module in COMMANDS:
        p = module.add_parser(sub)
        _global_options(p, suppress=True)
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="r8imfs: %(message)s", stream=sys.stderr)
    if verbose < 3:
        # httpx logs request URLs at INFO; never headers. Keep it for -vv.
        logging.getLogger("httpx").setLevel(logging.INFO if verbose >= 2 else logging.WARNING)
        logging.getLogger("httpcore").setLevel(logging.WARNING)


def _freeze_imports() -> None:
    """Move what imports made out of the collector's reach (``gc.freeze``), once
    per process: it lives as long as the process, and a full collection over
    it (~90,000 objects) cost a cold mount of a 10,000-file layer ~20 ms while
    the layer's entries were being made. Once: a later call would also freeze
    whatever garbage the caller (a test) has lying around."""
    global _frozen
    if not _frozen:
        gc.freeze()
        _frozen = True


_frozen = False


def main(argv: Sequence[str] | None = None) -> int:
    _freeze_imports()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    if args.token is None:
        args.token = os.environ.get("COG_TOKEN") or None
    _setup_logging(args.verbose)
    widen_socket_reads()  # process-wide (httpcore's class attribute): once, here
    run: Callable[[argparse.Namespace], Awaitable[None]] = args.run
    try:
        before = getattr(args, "before_trio", None)
        if before is not None and (code := before(args)) is not None:
            return int(code)
        if getattr(args, "registry", True):  # (umount talks to none)
            _tls.start()  # after any fork (mount's before_trio); made while the command imports
        trio.run(run, args)
    except R8imfsError as exc:
        return _report(exc, args)
    except KeyboardInterrupt:
        print("r8imfs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    except OSError as exc:
        # A local file the command reads or writes: a full disk, a read-only
        # or missing directory. One line, as for our own errors.
        error = R8imfsError(_os_message(exc))
        error.__cause__ = exc  # the -v traceback shows where it came from
        return _report(error, args)
    return 0


def _os_message(exc: OSError) -> str:
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def _report(exc: R8imfsError, args: argparse.Namespace) -> int:
    if args.verbose:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    print(f"r8imfs {args.command}: error: {_common.redact(str(exc), args)}", file=sys.stderr)
    return exc.exit_code
