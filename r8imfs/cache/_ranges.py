"""Pure bookkeeping for the blob cache: byte ranges, blocks, access streams.

No I/O and no trio here (the h11 shape): ``RangeSet`` holds which bytes of a
blob are present, ``Blocks`` maps offsets to aligned fetch blocks,
``SequentialDetector`` decides when to read ahead, ``Record`` is the
on-disk ``<hex>.ranges`` file and ``BlockTable`` the ``<hex>.blocks`` file
(with ``BlockHasher`` that makes it), encoded and decoded without touching disk.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

Span = tuple[int, int]  # half-open [start, end)


class RangeSet:
    """Sorted, disjoint, non-adjacent half-open intervals of a blob."""

    __slots__ = ("_starts", "_ends")

    def __init__(self, spans: Iterable[Span] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in spans:
            self.add(start, end)

    def add(self, start: int, end: int) -> int:
        """Insert ``[start, end)``, merging neighbours; returns bytes newly covered."""
        if start < 0 or end < start:
            raise ValueError(f"bad range [{start}, {end})")
        if start == end:
            return 0
        # First interval that ends at or after start, last that starts at or before end:
        # everything in between touches [start, end) and merges with it.
        lo = bisect.bisect_left(self._ends, start)
        hi = bisect.bisect_right(self._starts, end)
        before = self.covered()
        if lo < hi:
            start = min(start, self._starts[lo])
            end = max(end, self._ends[hi - 1])
        self._starts[lo:hi] = [start]
        self._ends[lo:hi] = [end]
        return self.covered() - before

    def missing(self, start: int, end: int) -> list[Span]:
        """The gaps of ``[start, end)`` not covered, in order."""
        gaps: list[Span] = []
        pos = start
        i = bisect.bisect_right(self._ends, start)
        while pos < end and i < len(self._starts):
            if self._starts[i] >= end:
                break
            if self._starts[i] > pos:
                gaps.append((pos, self._starts[i]))
            pos = max(pos, self._ends[i])
            i += 1
        if pos < end:
            gaps.append((pos, end))
        return gaps

    def covers(self, start: int, end: int) -> bool:
        return not self.missing(start, end)

    def contiguous_end(self, pos: int) -> int:
        """Where the interval holding byte ``pos`` ends; ``pos`` if it is absent."""
        i = bisect.bisect_right(self._starts, pos) - 1
        if i >= 0 and self._ends[i] > pos:
            return self._ends[i]
        return pos

    def covered(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))

    def update(self, other: RangeSet) -> None:
        for start, end in other:
            self.add(start, end)

    def copy(self) -> RangeSet:
        new = RangeSet()
        new._starts = list(self._starts)
        new._ends = list(self._ends)
        return new

    def __iter__(self) -> Iterator[Span]:
        return zip(self._starts, self._ends, strict=True)

    def __len__(self) -> int:
        return len(self._starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"RangeSet({list(self)!r})"


@dataclass(frozen=True, slots=True)
class Blocks:
    """Aligned blocks of ``block_size`` over a blob of ``size`` bytes (the last short)."""

    size: int
    block_size: int

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ValueError("block_size must be positive")

    @property
    def count(self) -> int:
        return -(-self.size // self.block_size)

    def span(self, index: int) -> Span:
        start = index * self.block_size
        return start, min(start + self.block_size, self.size)

    def covering(self, start: int, end: int) -> range:
        """Indices of the blocks that hold any byte of ``[start, end)``."""
        end = min(end, self.size)
        if start >= end:
            return range(0)
        return range(start // self.block_size, (end - 1) // self.block_size + 1)

    def ahead(self, pos: int, count: int) -> range:
        """The block holding ``pos`` and up to ``count`` blocks after it."""
        if pos >= self.size:
            return range(0)
        first = pos // self.block_size
        return range(first, min(self.count, first + count + 1))


class SequentialDetector:
    """Tracks a few access streams; a read continuing one of them is sequential.

    A read is sequential when it starts within ``slack`` bytes of where a
    recent read ended (several interleaved readers each keep their stream).
    The first read of a stream is not: two in a row are needed.
    """

    def __init__(self, slack: int = 128 * 1024, streams: int = 4) -> None:
        self.slack = slack
        self._ends: list[int] = []  # most recently used last
        self._max = streams

    def observe(self, offset: int, end: int) -> bool:
        for i, last in enumerate(self._ends):
            if abs(offset - last) <= self.slack:
                del self._ends[i]
                self._ends.append(max(end, last))
                return True
        self._ends.append(end)
        if len(self._ends) > self._max:
            del self._ends[0]
        return False


RECORD_VERSION = 1


@dataclass(frozen=True, slots=True)
class Record:
    """What ``<hex>.ranges`` says about ``<hex>.data``.

    ``ino`` is the data file's inode when the record was written: a record
    whose inode differs from the data file's describes a file since evicted
    and recreated, and is ignored. Nothing else (no registry, no repository,
    no credentials) is stored.
    """

    digest: str
    size: int
    ino: int
    ranges: tuple[Span, ...]
    verified: bool = False

    def encode(self) -> bytes:
        body = {
            "version": RECORD_VERSION,
            "digest": self.digest,
            "size": self.size,
            "ino": self.ino,
            "ranges": [list(r) for r in self.ranges],
            "verified": self.verified,
        }
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def decode(cls, raw: bytes) -> Record | None:
        """The record, or None when it is damaged or of another version."""
        try:
            body = json.loads(raw)
            if body.get("version") != RECORD_VERSION:
                return None
            ranges = tuple((int(s), int(e)) for s, e in body["ranges"])
            record = cls(
                str(body["digest"]),
                int(body["size"]),
                int(body["ino"]),
                ranges,
                bool(body.get("verified", False)),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        if any(not 0 <= s <= e <= record.size for s, e in ranges):
            return None
        return record

    def rangeset(self) -> RangeSet:
        return RangeSet(self.ranges)


@dataclass(frozen=True, slots=True)
class BlockTable:
    """The sha256 of each aligned block of a blob whose whole digest once checked out.

    Kept in ``<hex>.blocks``, which eviction leaves behind (32 bytes a block):
    when the blob is fetched again block by block, each block must match its
    entry before it is stored or served, so a registry or CDN that serves
    other bytes the second time gives an error, not wrong data. Decoding is
    strict: anything off (another blob, size or version) is None, i.e. unknown.
    """

    digest: str
    size: int
    block_size: int
    hashes: tuple[str, ...]

    def expected(self, index: int) -> str:
        return self.hashes[index]

    def encode(self) -> bytes:
        body = {
            "version": TABLE_VERSION,
            "digest": self.digest,
            "size": self.size,
            "block_size": self.block_size,
            "sha256": list(self.hashes),
        }
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def decode(cls, raw: bytes, digest: str, size: int, block_size: int) -> BlockTable | None:
        try:
            body = json.loads(raw)
            hashes = tuple(str(h) for h in body["sha256"])
            ok = (body.get("version"), body.get("digest"), body.get("size")) == (
                TABLE_VERSION,
                digest,
                size,
            ) and body.get("block_size") == block_size
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        if not ok or len(hashes) != Blocks(size, block_size).count:
            return None
        return cls(digest, size, block_size, hashes)


TABLE_VERSION = 1


class BlockHasher:
    """Feed a blob in order from byte 0; ``hashes()`` is one sha256 per aligned block."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._done: list[str] = []
        self._h = hashlib.sha256()
        self._filled = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            take = min(len(view), self.block_size - self._filled)
            self._h.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == self.block_size:
                self._done.append(self._h.hexdigest())
                self._h, self._filled = hashlib.sha256(), 0

    def hashes(self) -> tuple[str, ...]:
        tail = [self._h.hexdigest()] if self._filled else []
        return tuple(self._done + tail)
