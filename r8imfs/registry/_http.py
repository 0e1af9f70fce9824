"""Retries, error mapping and redirects: the one place httpx errors are translated.

Retry policy (what crane and regclient learned): 408, 429, 499, 5xx and
dropped connections are retried with exponential backoff and jitter,
honouring ``Retry-After`` (seconds or an HTTP date), up to ``RetryPolicy.
attempts`` tries in a row and never sleeping more than ``max_sleep`` at once.
One ``Backoff`` counts those tries wherever something is retried: a request,
a blob body that resumes (where an attempt that made progress starts the
count again, as containers/image's body reader does), an upload that starts
over. Every request has connect/read/write timeouts, and the read timeout is
a stall bound: no byte for ``stall_timeout()`` seconds ends the attempt.
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpcore
import httpx
import trio

from r8imfs.errors import AuthError, RegistryError, TransportError

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

#: Seconds without a byte from the registry before an attempt counts as
#: failed (a registry that accepted the connection and went silent).
STALL_TIMEOUT = 30.0
#: Tests set this (in seconds) to bound a stall in a few seconds, not 30.
STALL_ENV = "R8IMFS_STALL_TIMEOUT"


def stall_timeout() -> float:
    """``STALL_TIMEOUT``, or ``$R8IMFS_STALL_TIMEOUT`` when set (tests)."""
    try:
        value = float(os.environ.get(STALL_ENV, ""))
    except ValueError:
        return STALL_TIMEOUT
    return value if value > 0 else STALL_TIMEOUT


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5
    base: float = 0.25
    max_sleep: float = 20.0
    #: a resumed body must bring at least this much to count as progress
    progress: int = 1024 * 1024
    #: a body stops resuming after this long, progress or not
    deadline: float = 6 * 3600.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        hinted = parse_retry_after(retry_after)
        if hinted is not None:
            return min(hinted, self.max_sleep)
        backoff = self.base * (2**attempt)
        return float(min(backoff * (0.5 + random.random()), self.max_sleep))


class Backoff:
    """One retry budget: ``attempts`` failures in a row, then give up.

    ``progress()`` starts the count again (a resumed body that brought
    ``policy.progress`` bytes), but never past ``policy.deadline``.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.failures = 0  # in a row
        self.retries = 0  # in all
        self._started = time.monotonic()

    def exhausted(self) -> bool:
        late = time.monotonic() - self._started > self.policy.deadline
        return late or self.failures + 1 >= self.policy.attempts

    async def wait(self, retry_after: str | None = None) -> bool:
        """Count a failure; sleep and return True if another attempt is due."""
        if self.exhausted():
            return False
        await trio.sleep(self.policy.delay(self.failures, retry_after))
        self.failures += 1
        self.retries += 1
        return True

    def progress(self) -> None:
        self.failures = 0


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


def raise_for_status(
    response: httpx.Response,
    host: str,
    what: str,
    missing: type[RegistryError] = RegistryError,
) -> None:
    """Map an unsuccessful response to the error tree; a 404 raises ``missing``."""
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
    if status == 404 and missing is not RegistryError:
        raise missing(f"{what} not found on {host}{suffix}", status=status)
    raise RegistryError(
        f"{host} answered HTTP {status} for {what}{suffix}",
        status=status,
        retry_after=response.headers.get("retry-after"),
    )


@contextmanager
def translate(host: str, what: str) -> Iterator[None]:
    """Turn httpx's exceptions into ours at the client boundary."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise TransportError(f"timed out talking to {host} ({what})") from exc
    except httpx.StreamConsumed as exc:
        # the auth flow renewed a token and wanted to send a streamed body
        # again: the caller replays it (a new upload session)
        raise TransportError(f"{host} asked to authenticate again during {what}") from exc
    except httpx.UnsupportedProtocol as exc:
        # a realm or redirect to ftp:// or the like: no retry will change it
        raise RegistryError(f"cannot reach {host} ({what}): {exc}") from exc
    except httpx.TransportError as exc:
        raise TransportError(f"cannot reach {host} ({what}): {exc or type(exc).__name__}") from exc


def same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)
