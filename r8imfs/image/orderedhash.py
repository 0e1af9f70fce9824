"""The digest of a blob whose ranges arrive out of order, computed once, off the loop.

``fetchplan.UnitReader`` fetches ranges of a blob several at a time, so they
complete in any order; a single pass (``extract``) must still verify the
blob's digest before it publishes anything. ``OrderedHash`` takes each range
as it arrives (``add``, on the trio loop, no copying), keeps the ones ahead
of the hashed prefix, and hashes the prefix forward in a ``run_io`` thread,
one update at a time. Memory: the ranges waiting for an earlier one, at most
what the reader has in flight. Overlapping ranges (gzip spans share a byte)
are hashed once. ``verify(size, digest)`` waits for the hashing to finish
and raises ``DigestMismatch`` on a mismatch or a gap.
"""

from __future__ import annotations

import hashlib

import trio

from r8imfs._threads import run_io
from r8imfs.errors import DigestMismatch

Piece = bytes | memoryview


class OrderedHash:
    """Hash ``[0, size)`` of a blob from ranges added in any order."""

    def __init__(self, algorithm: str = "sha256", nursery: trio.Nursery | None = None) -> None:
        self.algorithm = algorithm
        self._hash = hashlib.new(algorithm)
        self._nursery = nursery
        self.pos = 0  # bytes hashed so far
        self._waiting: dict[int, Piece] = {}  # start -> bytes, all beyond pos
        self._lock = trio.Lock()
        self._running = False

    def add(self, start: int, data: Piece) -> None:
        """Note ``data`` at ``start`` (a range already hashed is ignored); with a
        nursery, hashing moves forward in the background as soon as it can."""
        if start + len(data) <= self.pos:
            return
        old = self._waiting.get(start)
        if old is None or len(old) < len(data):
            self._waiting[start] = data
        if self._nursery is not None and not self._running and self.ready:
            self._running = True
            self._nursery.start_soon(self._background)

    async def _background(self) -> None:
        try:
            await self.advance()
        finally:
            self._running = False

    @property
    def ready(self) -> bool:
        """True when a waiting range continues the hashed prefix."""
        return any(s <= self.pos < s + len(d) for s, d in self._waiting.items())

    async def advance(self) -> None:
        """Hash every waiting range that continues the prefix (in a worker thread)."""
        async with self._lock:
            while True:
                piece = self._next()
                if piece is None:
                    return
                await run_io(self._hash.update, piece)  # hashlib releases the GIL
                self.pos += len(piece)

    def _next(self) -> Piece | None:
        for start in sorted(self._waiting):
            data = self._waiting[start]
            if start + len(data) <= self.pos:
                del self._waiting[start]  # wholly hashed already (an overlap)
                continue
            if start > self.pos:
                return None
            del self._waiting[start]
            return data[self.pos - start :]
        return None

    async def verify(self, size: int, expected: str, what: str = "blob") -> None:
        """All of ``[0, size)`` hashed and matching ``expected``, else ``DigestMismatch``."""
        await self.advance()
        if self.pos != size:
            raise DigestMismatch(f"{what}: only {self.pos} of {size} bytes were hashed")
        got = f"{self.algorithm}:{self._hash.hexdigest()}"
        if got != expected:
            raise DigestMismatch(f"{what} hashes to {got}, not {expected}")
