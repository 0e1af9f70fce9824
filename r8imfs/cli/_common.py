"""What every command shares: the client from global options, references, redaction."""

from __future__ import annotations

import argparse
import sys

from r8imfs.errors import NotBuilt, UsageError
from r8imfs.oci import reference
from r8imfs.oci.manifest import Platform
from r8imfs.oci.reference import Reference
from r8imfs.registry.client import ClientOptions, RegistryClient


def client(args: argparse.Namespace) -> RegistryClient:
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
    return NotBuilt(
        f"`r8imfs {name}` is not built yet in this version (tracked as issue #{issue})"
    )
