"""``r8imfs``: the command line. Parsing and printing only; work happens below.

Global options are accepted before or after the subcommand: each subparser
repeats them with ``default=SUPPRESS``, so a value given first is not
overwritten by the subparser's default.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from r8imfs import __version__
from r8imfs.cli import _common
from r8imfs.errors import R8imfsError

#: The commands, in the order ``--help`` lists them: ``r8imfs.cli.<module>`` and
#: the names that run it (aliases after the first). Only the module of the command
#: given is imported (``build_parser``): ``umount`` loads neither trio nor httpx.
COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("layers", ("layers", "report")),
    ("ls", ("ls",)),
    ("cat", ("cat",)),
    ("cp", ("cp",)),
    ("tensors", ("tensors",)),
    ("extract", ("extract",)),
    ("affix", ("affix", "add-layer")),
    ("remix", ("remix",)),
    ("zstd", ("zstd", "recompress")),
    ("index", ("index",)),
    ("clone", ("clone",)),
    ("mount", ("mount",)),
    ("umount", ("umount", "unmount")),
    ("commit", ("commit",)),
)
_MODULE_OF = {name: module for module, names in COMMANDS for name in names}
#: Global options that take a value (``-t TOKEN``): skipped when looking for the command.
_VALUED = frozenset({"-t", "--token", "-r", "--registry", "--platform"})

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


def _command_in(argv: Sequence[str]) -> str | None:
    """The command named on ``argv`` (its first word that is no option or option
    value), if it is one of ours."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _VALUED:
            skip = True
        elif word == "--":
            return None
        elif not word.startswith("-"):
            return word if word in _MODULE_OF else None
    return None


def command_modules(argv: Sequence[str] | None = None) -> list[ModuleType]:
    """The ``r8imfs.cli`` modules to build the parser from: the command ``argv``
    names alone, or all of them (no ``argv``, no command, or an unknown one:
    argparse lists them)."""
    named = _command_in(argv) if argv is not None else None
    chosen = [_MODULE_OF[named]] if named else [module for module, _ in COMMANDS]
    return [importlib.import_module(f"r8imfs.cli.{module}") for module in chosen]


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``; every command's without one."""
    parser = argparse.ArgumentParser(
        prog="r8imfs",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"r8imfs {__version__}")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module in command_modules(argv):
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
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    _freeze_imports()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    if args.token is None:
        args.token = os.environ.get("COG_TOKEN") or None
    _setup_logging(args.verbose)
    try:
        if (run_sync := getattr(args, "run_sync", None)) is not None:
            run_sync(args)  # a command without a registry or trio (umount)
        elif (code := _run_async(args)) is not None:
            return code
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


def _run_async(args: argparse.Namespace) -> int | None:
    """``trio.run(args.run, args)``: the registry client's process-wide setup
    first; the exit code when ``before_trio`` ends the command (mount's parent)."""
    import trio

    from r8imfs.registry import _tls
    from r8imfs.registry._http import widen_socket_reads

    widen_socket_reads()  # process-wide (httpcore's class attribute): once, here
    before = getattr(args, "before_trio", None)
    if before is not None and (code := before(args)) is not None:
        return int(code)
    _tls.start()  # after any fork (mount's before_trio); made while the command imports
    trio.run(args.run, args)
    return None


def _os_message(exc: OSError) -> str:
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def _report(exc: R8imfsError, args: argparse.Namespace) -> int:
    if args.verbose:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    print(f"r8imfs {args.command}: error: {_common.redact(str(exc), args)}", file=sys.stderr)
    return exc.exit_code
