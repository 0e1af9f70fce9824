"""Retries, error mapping and redirects: the one place httpx errors are translated.

Retry policy (what crane and regclient learned): 408, 429, 499, 5xx and
dropped connections are retried with exponential backoff and jitter,
honouring ``Retry-After`` (seconds or an HTTP date), up to ``RetryPolicy.
attempts`` tries and never sleeping more than ``max_sleep`` at once.
Every request has connect/read/write timeouts, so nothing waits forever.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpcore
import httpx

from r8imfs.errors import (
    AuthError,
    BlobUnknown,
    ManifestUnknown,
    RegistryError,
    TransportError,
)

#: Bytes httpcore asks the socket for at a time (its default is 64 KiB). Each
#: read is a pass through h11 and the trio loop; blob bodies are big, and 1 MiB
#: reads cut a 1 GiB download's CPU from ~0.6-0.85 s to ~0.2 s (and its wall
#: time on loopback from ~1 s to ~0.5 s). A read returns what the socket has:
#: small responses wait for nothing.
SOCKET_READ = 1024 * 1024


def widen_socket_reads(size: int = SOCKET_READ) -> None:
    """Make httpcore's HTTP/1.1 connections read ``size`` bytes at a time."""
    for cls in (httpcore.AsyncHTTP11Connection, httpcore.HTTP11Connection):
        if isinstance(getattr(cls, "READ_NUM_BYTES", None), int):
            cls.READ_NUM_BYTES = max(cls.READ_NUM_BYTES, size)


RETRY_STATUSES = frozenset({408, 429, 499, 500, 502, 503, 504, 522})
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5
    base: float = 0.25
    max_sleep: float = 20.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        hinted = parse_retry_after(retry_after)
        if hinted is not None:
            return min(hinted, self.max_sleep)
        backoff = self.base * (2**attempt)
        return float(min(backoff * (0.5 + random.random()), self.max_sleep))


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def registry_message(response: httpx.Response) -> str:
    """The registry's own words, from its ``{"errors": [...]}`` body if any."""
    try:
        errors = response.json().get("errors") or []
        parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors]
        return "; ".join(p for p in parts if p)
    except (ValueError, AttributeError, httpx.ResponseNotRead):
        return ""


def raise_for_status(response: httpx.Response, host: str, what: str) -> None:
    """Map an unsuccessful response to the error tree."""
    status = response.status_code
    if status < 400:
        return
    detail = registry_message(response)
    suffix = f": {detail}" if detail else ""
    if status in (401, 403):
        raise AuthError(
            f"{host} denied access to {what} (HTTP {status}){suffix}",
            hint="give credentials with -t/--token or COG_TOKEN, or `docker login " + host + "`",
            status=status,
        )
    if status == 404:
        kind = BlobUnknown if "blob" in what else ManifestUnknown
        raise kind(f"{what} not found on {host}{suffix}", status=status)
    raise RegistryError(f"{host} answered HTTP {status} for {what}{suffix}", status=status)


@contextmanager
def translate(host: str, what: str) -> Iterator[None]:
    """Turn httpx's exceptions into ours at the client boundary."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise TransportError(f"timed out talking to {host} ({what})") from exc
    except httpx.UnsupportedProtocol as exc:
        # a realm or redirect to ftp:// or the like: no retry will change it
        raise RegistryError(f"cannot reach {host} ({what}): {exc}") from exc
    except httpx.TransportError as exc:
        raise TransportError(f"cannot reach {host} ({what}): {exc or type(exc).__name__}") from exc


def same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)
