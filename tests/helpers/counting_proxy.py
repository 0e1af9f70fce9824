"""Byte counts through the fault proxy, for "nothing moved" tests.

``start_counting_proxy(upstream)`` starts ``tools.faultproxy.FaultProxy`` in
front of ``upstream`` ("127.0.0.1:PORT") with no faults: it keeps the client's
``Host`` header, so the registry's upload ``Location``s point back through it,
and logs every exchange with its request body bytes (after undoing chunked
transfer coding) and response body bytes. ``CountingProxy`` reads that log the
way the tests ask: did ``affix`` download a base layer, how much did it upload.
It is one proxy with the reliability suite's, not a second implementation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tools.faultproxy import FaultProxy, Logged

_BLOB_GET = re.compile(r"^/v2/.+/blobs/(sha256:[0-9a-f]{64})")


@dataclass(frozen=True, slots=True)
class Exchange:
    method: str
    path: str
    status: int
    request_bytes: int
    response_bytes: int


def _exchange(entry: Logged) -> Exchange:
    return Exchange(entry.method, entry.path, entry.status, entry.received, entry.sent)


class CountingProxy:
    """A fault-free FaultProxy, its log seen as byte counts."""

    def __init__(self, upstream: str) -> None:
        self._proxy = FaultProxy(upstream).start()
        self.host = self._proxy.host
        self.upstream = upstream

    @property
    def exchanges(self) -> list[Exchange]:
        return [_exchange(e) for e in self._proxy.requests if e.server == "proxy"]

    def reset(self) -> None:
        self._proxy.clear()

    @property
    def uploaded(self) -> int:
        """Request body bytes, in all."""
        return sum(e.request_bytes for e in self.exchanges)

    @property
    def downloaded(self) -> int:
        """Response body bytes, in all."""
        return sum(e.response_bytes for e in self.exchanges)

    def blob_downloads(self) -> dict[str, int]:
        """Response bytes of blob GETs, by digest."""
        out: dict[str, int] = {}
        for e in self.exchanges:
            m = _BLOB_GET.match(e.path)
            if e.method == "GET" and m:
                out[m.group(1)] = out.get(m.group(1), 0) + e.response_bytes
        return out

    def blob_gets(self) -> int:
        """How many blob GETs there were (ranged or not)."""
        return sum(1 for e in self.exchanges if e.method == "GET" and _BLOB_GET.match(e.path))

    def writes(self) -> list[Exchange]:
        """Every request that could change the registry."""
        return [e for e in self.exchanges if e.method in ("POST", "PUT", "PATCH", "DELETE")]

    def stop(self) -> None:
        self._proxy.stop()


def start_counting_proxy(upstream: str) -> CountingProxy:
    return CountingProxy(upstream)
