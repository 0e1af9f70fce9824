"""What every command shares: the client from global options, references, redaction."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from r8imfs import _units
from r8imfs.errors import NotBuilt, UsageError
from r8imfs.oci import reference
from r8imfs.oci.manifest import Platform
from r8imfs.oci.reference import Reference

if TYPE_CHECKING:  # the client (httpx) and ops (trio) load when a command runs
    from r8imfs.ops.common import Context, Pushed
    from r8imfs.registry.client import RegistryClient


def client(args: argparse.Namespace) -> RegistryClient:
    from r8imfs.registry.client import ClientOptions, RegistryClient

    return RegistryClient(ClientOptions(cog_token=args.token, insecure=args.insecure))


def ref(args: argparse.Namespace, text: str) -> Reference:
    return reference.parse(text, args.registry)


def dest_ref(args: argparse.Namespace, text: str) -> Reference:
    return reference.parse_repository(text, args.registry)


def platform(args: argparse.Namespace) -> Platform:
    return Platform.parse(args.platform)


def redact(text: str, args: argparse.Namespace) -> str:
    """Belt and braces: no secret we were given ever reaches the terminal."""
    for secret in (getattr(args, "token", None),):
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def note(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr)


def not_built(name: str, issue: int) -> NotBuilt:
    return NotBuilt(f"`r8imfs {name}` is not built yet in this version (tracked as issue #{issue})")


def context(args: argparse.Namespace) -> Context:
    """Notes and progress bars on stderr; bars only on a terminal, nothing with -q."""
    from r8imfs.cli.progress import TerminalTransfers
    from r8imfs.ops.common import Context

    quiet = bool(getattr(args, "quiet", False))
    board = TerminalTransfers.terminal(quiet)
    return Context(notify=_drop if quiet else board.note, progress=board)


def _drop(message: str) -> None:
    return None


def destination(
    args: argparse.Namespace, source: Reference, text: str | None, suffix: str
) -> Reference:
    """The reference to write: ``text`` if given, else ``<tag>-<suffix>`` beside the source."""
    from r8imfs.ops.common import choose_destination

    dest = dest_ref(args, text) if text else None
    chosen, message = choose_destination(source, dest, suffix)
    if message:
        note(args, message)
    return chosen


def finish(ctx: Context, pushed: Pushed) -> None:
    """Close the progress board; the new image is the last line of stdout."""
    ctx.progress.close()
    print(pushed, flush=True)


def parse_size(text: str) -> int:
    """An argparse ``type``: ``65536``, ``64K``, ``4M``, ``1G`` as a positive byte count."""
    try:
        value = _units.parse_size(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("a size must be positive")
    return value


def add_level(p: argparse.ArgumentParser) -> None:
    """``--level``: the gzip level of a layer the command writes (affix, commit)."""
    from r8imfs.ops.layerstream import DEFAULT_LEVEL  # (only affix's and commit's parsers)

    p.add_argument(
        "--level",
        type=int,
        choices=range(1, 10),
        default=DEFAULT_LEVEL,
        metavar="1-9",
        help=f"gzip level of the new layer (default: {DEFAULT_LEVEL})",
    )
