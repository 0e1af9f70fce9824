"""Fetch and decode a layer's units ahead of its readers, many at once.

Theory of operation
-------------------
A ``UnitReader`` serves uncompressed bytes of one layer from its units
(``archive.units``: seekable zstd frames, gzip checkpoint spans, later TOC
chunks). It has three jobs, all on the trio loop except the decoding:

*Fetch.* Wanted units wait in a queue, each a ``_Slot``. ``_pump`` turns the
queue into ranged GETs (the ``Fetcher`` given, e.g. a blob cache range
read): at most ``parallel`` in flight, the most urgent unit first, and each
GET extended over the queued units that follow it in the blob while the
range stays within ``max_range`` (adjacent needs coalesced: one request,
one round trip, instead of one per 4 MiB frame).

*Priority.* Demand (a reader waits for the unit) always goes before
prefetch: the queue is ordered by (priority, arrival), a prefetched unit a
reader starts waiting for is promoted, and prefetch may hold at most
``parallel - 1`` GETs, so a demand read never waits behind a prefetch GET
for a connection.

*Read-ahead.* Each open file reads through a ``ReadStream``. A read that
starts where the stream's last one ended (within ``SEQUENTIAL_SLACK``)
doubles the stream's window, from one unit's size up to ``max_window``
bytes beyond the read, and no further than the stream's share of the decoded
cache (``DecodedCache.share``: the streams reading ahead split its budget, so
none evicts what another read ahead before it is read; a unit a sequential
reader has read to its end goes first when room is needed). Once the window
is ``max_range`` wide it is topped up a whole GET at a time (``_whole_get``),
not a unit at a time as the reader moves on: every read-ahead GET would
otherwise be one unit, and a request costs both ends far more than its bytes
do (serving a GiB as 4 MiB ranges cost the test registry 1.7 CPU-s against
0.8 s as 16 MiB ranges; a gzip ``cp`` made 257 GETs of one span each). Any
other read resets the window to nothing (random access fetches just the
units it covers: "one frame or span") and drops the stream's queued and
in-flight prefetch, as ``close`` does when the reader goes away. In-flight
prefetch is cancelled only when no demand and no other stream wants any unit
of its GET.

*Read-around.* A layer of small files (a TOC layer: one unit per file body)
read file by file would cost one GET per file, each a round trip. With
``read_around`` set, a demand miss on small units also queues the small units
that follow it in the blob, up to ``read_around`` compressed bytes, owned by
the reading stream; ``_coalesce`` puts them in the demand's own GET, and the
next files are cache hits. It stops at the first unit that is not small, so a
random read into a big file still costs only the units it covers.

*Decode.* Fetched bytes are cut into units and each unit is decoded by
``decode`` in a ``run_cpu`` thread (one per core; zstandard and zlib-ng
release the GIL), so independent units decode in parallel and the loop
never runs a decoder. Decoded units go into a ``DecodedCache`` (an LRU
bounded in bytes, shared by all layers) and to the readers waiting on them.

Errors: a failed fetch or decode fails the reads waiting on its units (the
FUSE layer maps that to EIO); nothing is cached from it, and a later read
asks again. Wrong bytes are the fetcher's and the decoder's business (block
hashes in the blob cache, checksums in zstd frames, the digests a verified
table's decoder checks: ``units.UnitTable.verified``); this module moves bytes.

Wiring: ``image.ImageFiles`` keeps one ``UnitReader`` per layer that has
units (``units.units_for_layer`` over its ``LayerIndex``), fetching through
``BlobReader.fetch_range`` (exact ranges answered from the GET's own bytes,
stored and hashed behind), its nursery the cache's background nursery, one
``DecodedCache`` per mount; a FUSE open takes a ``stream()`` and its release
closes it. ``ops.extractunits`` reads a layer with ``iter_range(...,
keep=False)`` over plain ranged GETs and ``on_fetched=OrderedHash.add``.
"""

from __future__ import annotations

import copy
import itertools
import logging
import traceback
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field

import trio

from r8imfs._threads import run_cpu
from r8imfs.engine.codecs.units import Decoded, Decoder, Unit, UnitTable

log = logging.getLogger("r8imfs.image")

MiB = 1024 * 1024
DEMAND, PREFETCH = 0, 1
DEFAULT_PARALLEL = 4
DEFAULT_MAX_RANGE = 16 * MiB
DEFAULT_MAX_WINDOW = 64 * MiB
DEFAULT_BUDGET = 128 * MiB
#: A read this close to where the stream's last read ended still counts as
#: sequential (the kernel's readahead and concurrent FUSE requests reorder).
SEQUENTIAL_SLACK = 1 * MiB
#: Units this close in the blob still share a GET (a TOC layer's chunks of
#: neighbouring files have a tar header's frame between them): the gap's bytes
#: cost less than a round trip.
COALESCE_GAP = 16 * 1024
#: A unit this small (compressed and decoded) is a small file's, or a piece of
#: one: what ``read_around`` may add to a GET.
SMALL_UNIT = 64 * 1024

#: ``await fetch(start, end)``: exactly the blob's bytes ``[start, end)``.
Fetcher = Callable[[int, int], Awaitable[bytes | bytearray]]


def _view(data: Decoded) -> bytes | memoryview:
    """``data`` to slice without copying: a ``bytes`` slices as itself when whole,
    a decoder's ``bytearray`` (``zran.inflate_from``) only through a read-only view."""
    return data if isinstance(data, bytes) else memoryview(data).toreadonly()


def _small(unit: Unit) -> bool:
    return unit.csize <= SMALL_UNIT and unit.usize <= SMALL_UNIT


class DecodedCache:
    """Decoded units, least recently used first out, within ``budget`` bytes.

    Shared by every layer of a mount (keys carry the layer). A unit bigger
    than the budget is not kept; readers waiting on it still get it.
    """

    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        self.budget = budget
        self.size = 0
        self._data: OrderedDict[Hashable, Decoded] = OrderedDict()
        #: streams reading ahead into this cache (a ``ReadStream`` with a window,
        #: until it jumps or closes: one left open and idle keeps its share)
        self.readers_ahead = 0

    def share(self) -> int:
        """The budget's share of one stream reading ahead: what each one's read-ahead
        may hold, so that everything read ahead is still here when its reader
        arrives (a unit evicted before use is fetched and decoded again)."""
        return self.budget // max(1, self.readers_ahead)

    def get(self, key: Hashable) -> Decoded | None:
        data = self._data.get(key)
        if data is not None:
            self._data.move_to_end(key)
        return data

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def demote(self, key: Hashable) -> None:
        """``key`` goes first when room is needed (a unit its reader has read past)."""
        if key in self._data:
            self._data.move_to_end(key, last=False)

    def discard(self, key: Hashable) -> None:
        old = self._data.pop(key, None)
        if old is not None:
            self.size -= len(old)

    def put(self, key: Hashable, data: Decoded) -> None:
        self.discard(key)
        if len(data) > self.budget:
            return
        self._data[key] = data
        self.size += len(data)
        while self.size > self.budget:
            _, gone = self._data.popitem(last=False)
            self.size -= len(gone)


@dataclass(eq=False, slots=True)
class _Slot:
    """One unit on its way: queued, being fetched, or being decoded."""

    unit: Unit
    priority: int
    seq: int
    done: trio.Event = field(default_factory=trio.Event)
    data: Decoded | None = None
    error: BaseException | None = None
    demand: int = 0  # readers waiting on it
    owners: set[int] = field(default_factory=set)  # streams that prefetched it
    group: _Group | None = None  # while its GET is in flight


@dataclass(eq=False, slots=True)
class _Group:
    """One ranged GET covering consecutive units."""

    slots: list[_Slot]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    prefetch: bool = False

    @property
    def start(self) -> int:
        return self.slots[0].unit.cstart

    @property
    def end(self) -> int:
        return self.slots[-1].unit.cend


class ReadStream:
    """One open file's view of a ``UnitReader``: its adaptive read-ahead window."""

    def __init__(self, reader: UnitReader, ident: int, end: int | None = None) -> None:
        self._reader = reader
        self.ident = ident
        #: where its file ends in the layer: nothing past it is read ahead, and a
        #: read that reaches it gives back its share of the cache (an open file
        #: read to its end and left open, as a loader that maps it does)
        self.end = reader.size if end is None else min(end, reader.size)
        self.window = 0
        self._next: int | None = None  # where the last read ended
        self._unit = -1  # the unit the last read started in
        self.queued_to = 0  # units below this were queued for it already (since its last jump)
        self.closed = False

    def observe(self, offset: int, end: int, first: Unit) -> bool:
        """Update the window for a read of ``[offset, end)``; True if it was sequential.

        The window doubles each time a sequential reader enters a new unit
        (FUSE reads 128 KiB at a time: doubling per read would reach the
        bound within one unit), starting at that unit's size. It is bounded
        by ``max_window`` and by this stream's share of the decoded cache,
        less the unit being read (``DecodedCache.share``): two readers of big
        files read ahead half as far as one does, rather than each evicting
        what the other read ahead.
        """
        slack = self._reader.slack
        sequential = self._next is not None and abs(offset - self._next) <= slack
        if not sequential:
            self._set_window(0)
        elif first.index != self._unit or not self.window:
            grown = max(2 * self.window, first.usize)
            if not self.window:
                self._set_window(first.usize)  # counted among the readers ahead first
            share = self._reader.cache.share() - first.usize
            self._set_window(min(grown, max(min(self._reader.max_window, share), first.usize)))
        if end >= self.end:
            self._set_window(0)  # at its end: nothing left to read ahead
        self._next, self._unit = end, first.index
        return sequential

    def _set_window(self, window: int) -> None:
        if bool(window) != bool(self.window):
            self._reader.cache.readers_ahead += 1 if window else -1
        self.window = window

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        return await self._reader.read(offset, size, self)

    def close(self) -> None:
        """The reader went away: its prefetch is dropped (and cancelled if in flight)."""
        if not self.closed:
            self.closed = True
            self._set_window(0)
            self._reader._drop_prefetch(self.ident)


class UnitReader:
    """Uncompressed reads of one layer, served from units fetched and decoded ahead.

    ``decode`` None: the units are stored bytes (``units.fixed_units`` over a
    plain tar), served as fetched.
    """

    def __init__(
        self,
        table: UnitTable,
        fetch: Fetcher,
        decode: Decoder | None,
        nursery: trio.Nursery,
        *,
        cache: DecodedCache | None = None,
        key: Hashable = None,
        parallel: int = DEFAULT_PARALLEL,
        max_range: int = DEFAULT_MAX_RANGE,
        max_window: int = DEFAULT_MAX_WINDOW,
        slack: int = SEQUENTIAL_SLACK,
        on_fetched: Callable[[int, memoryview], None] | None = None,
        prefetch_fetch: Fetcher | None = None,
        read_around: int = 0,
    ) -> None:
        if parallel < 2:
            raise ValueError("parallel must be at least 2 (one GET is kept for demand reads)")
        self.table = table
        self._fetch = fetch
        self._decode = decode
        self._nursery = nursery
        self.cache = cache if cache is not None else DecodedCache()
        self._key = key
        self.parallel = parallel
        self.max_range = max_range
        self.max_window = max_window
        self.slack = slack
        self._on_fetched = on_fetched  # e.g. OrderedHash.add: verify a single pass
        # read-ahead GETs, if they go another way (e.g. past the blob cache)
        self._prefetch_fetch = prefetch_fetch or fetch
        self.read_around = read_around  # compressed bytes; 0: off
        self._slots: dict[int, _Slot] = {}  # unit index -> slot, until decoded
        self._queued: set[int] = set()
        self._groups: set[_Group] = set()
        self._seq = itertools.count()
        self._streams = itertools.count()
        self._closed = False
        self.requests = 0
        self.bytes_fetched = 0
        self.decodes = 0

    # -- public -----------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.table.uncompressed_size

    def stream(self, end: int | None = None) -> ReadStream:
        """A read-ahead context for one open file whose bytes end at ``end`` (default:
        the layer's end); ``close`` it when the file closes."""
        return ReadStream(self, next(self._streams), end)

    async def read(
        self, offset: int, size: int, stream: ReadStream | None = None
    ) -> bytes | memoryview:
        """``size`` uncompressed bytes at ``offset`` (fewer only at the end): a
        read-only view into a decoded unit when one unit holds them all."""
        end = min(offset + size, self.size)
        if offset < 0 or size < 0:
            raise ValueError(f"negative offset or size ({offset}, {size})")
        if offset >= end:
            return b""
        wanted = self.table.covering(offset, end)
        if stream is not None and not stream.observe(offset, end, self.table[wanted[0]]):
            self._drop_prefetch(stream.ident)  # it jumped: what it read ahead is moot
            stream.queued_to = 0
        slots = [self._want(i) for i in wanted]
        if stream is not None and stream.window:
            self._prefetch(stream, end, min(end + stream.window, stream.end))
        elif self.read_around and any(i in self._queued for i in wanted):
            self._read_around(wanted, stream)  # a miss no GET covers yet
        self._pump()
        parts = []
        for i, slot in zip(wanted, slots, strict=True):
            data, u = await self._wait(i, slot), self.table[i]
            # a view, not a copy: a FUSE reply takes any buffer
            parts.append(memoryview(data).toreadonly()[max(offset - u.ustart, 0) : end - u.ustart])
            if stream is not None and stream.window and end >= u.uend:
                # read to its end by a sequential reader (whose page cache now has
                # it): it goes before what is read ahead, when room is needed
                self.cache.demote((self._key, i))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def unit(self, index: int) -> Decoded:
        """The decoded bytes of one unit (a demand read)."""
        slot = self._want(index)
        self._pump()
        return await self._wait(index, slot)

    async def iter_range(
        self, start: int, end: int, *, keep: bool = True
    ) -> AsyncGenerator[bytes | memoryview, None]:
        """Decoded ``[start, end)`` in order, unit by unit, ``max_window`` bytes ahead.

        For a caller that reads everything (``extract``): GETs and decodes run
        ahead in parallel while the caller consumes in order. Use inside
        ``contextlib.aclosing`` so that leaving early cancels the read-ahead.
        ``keep=False`` drops each unit from the cache once yielded (a single
        pass has no use for it; the cache then holds little more than the
        window).
        """
        stream = self.stream()
        try:
            wanted = self.table.covering(start, min(end, self.size))
            ahead = queued = wanted.start  # units below ``queued`` were queued
            for i in wanted:
                ahead = max(ahead, i + 1)
                while ahead < wanted.stop and self._ahead_bytes(i, ahead) < self.max_window:
                    ahead += 1
                # a whole GET at a time (see *Read-ahead*), unless the next unit waits
                if queued <= i + 1 or ahead == wanted.stop or self._fills_get(queued, ahead):
                    self.prefetch_units(range(max(queued, i + 1), ahead), stream)
                    queued = max(queued, ahead)
                data, u = await self.unit(i), self.table[i]
                if not keep:
                    self.cache.discard((self._key, i))
                yield _view(data)[max(start - u.ustart, 0) : end - u.ustart]
        finally:
            stream.close()

    def describe(self, offset: int, size: int) -> str:
        """Where the units a read of ``[offset, offset + size)`` needs are: for the
        log of a read that timed out."""
        wanted = self.table.covering(offset, min(offset + size, self.size))
        states = []
        for i in wanted:
            slot = self._slots.get(i)
            if (self._key, i) in self.cache:
                state = "cached"
            elif slot is None:
                state = "not wanted"
            elif i in self._queued:
                state = f"queued (priority {slot.priority}, {slot.demand} waiting)"
            elif slot.group is not None:
                state = f"in a GET of {slot.group.start}-{slot.group.end}"
            else:
                state = f"decoding ({slot.demand} waiting)"
            states.append(f"unit {i}: {state}")
        return (
            f"{'; '.join(states)}; {len(self._groups)} GET(s) in flight, "
            f"{len(self._queued)} unit(s) queued"
        )

    def _ahead_bytes(self, i: int, ahead: int) -> int:
        return self.table[ahead - 1].uend - self.table[i].uend

    def _fills_get(self, first: int, stop: int) -> bool:
        return (
            first < stop and self.table[stop - 1].cend - self.table[first].cstart >= self.max_range
        )

    def prefetch_units(self, indexes: range, stream: ReadStream) -> None:
        """Queue units for ``stream`` without waiting (a caller that reads all, e.g. extract)."""
        for i in indexes:
            self._queue_prefetch(i, stream.ident)
        self._pump()

    def close(self) -> None:
        """Cancel every GET and forget the queue; later reads raise ``ClosedResourceError``."""
        self._closed = True
        for group in list(self._groups):
            group.scope.cancel()
        for i in list(self._queued):
            self._finish(self._slots[i], trio.ClosedResourceError("the layer reader is closed"))
        self._queued.clear()

    # -- wanting units --------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the layer reader is closed")

    def _want(self, index: int) -> _Slot | None:
        """A demand on unit ``index``: None if cached, else its slot (queued if need be)."""
        self._check_open()
        if (self._key, index) in self.cache:
            return None
        slot = self._slots.get(index)
        if slot is None:
            slot = self._slots[index] = _Slot(self.table[index], DEMAND, next(self._seq))
            self._queued.add(index)
        elif slot.priority != DEMAND and index in self._queued:
            slot.priority, slot.seq = DEMAND, next(self._seq)  # promoted, behind older demand
        slot.demand += 1
        return slot

    async def _wait(self, index: int, slot: _Slot | None) -> Decoded:
        if slot is None:
            data = self.cache.get((self._key, index))
            if data is not None:
                return data
            slot = self._want(index)  # evicted meanwhile: want it again
            self._pump()
            assert slot is not None
        try:
            await slot.done.wait()
        finally:
            slot.demand -= 1
        if slot.error is not None:
            raise copy.copy(slot.error) from slot.error
        assert slot.data is not None
        return slot.data

    def _prefetch(self, stream: ReadStream, start: int, end: int) -> None:
        """Queue the window's units that this stream has not queued yet (see
        *Read-ahead*: a window ``max_range`` wide or more is topped up a whole
        GET at a time)."""
        wanted = self.table.covering(start, min(end, self.size))
        first = max(wanted.start, stream.queued_to)
        if first >= wanted.stop:
            return
        stop = (
            self._whole_get(first, wanted.stop) if stream.window >= self.max_range else wanted.stop
        )
        for i in range(first, stop):
            self._queue_prefetch(i, stream.ident)
        stream.queued_to = max(stream.queued_to, stop)

    def _whole_get(self, first: int, stop: int) -> int:
        """``stop``, moved on while units ``[first, stop)`` still fit one GET."""
        table, base = self.table, self.table[first].cstart
        while stop < len(table) and table[stop].cend - base <= self.max_range:
            stop += 1
        return stop

    def _read_around(self, wanted: range, stream: ReadStream | None) -> None:
        """Queue the small units after a small demand miss (see *Read-around*)."""
        table, first = self.table, self.table[wanted.start]
        if any(not _small(table[i]) for i in wanted):
            return
        owner = stream.ident if stream is not None else -1
        i = wanted.stop
        while (
            i < len(table) and _small(table[i]) and table[i].cend - first.cstart <= self.read_around
        ):
            self._queue_prefetch(i, owner)
            i += 1

    def _queue_prefetch(self, index: int, ident: int) -> None:
        self._check_open()
        if (self._key, index) in self.cache:
            return
        slot = self._slots.get(index)
        if slot is None:
            slot = self._slots[index] = _Slot(self.table[index], PREFETCH, next(self._seq))
            self._queued.add(index)
        slot.owners.add(ident)

    def _drop_prefetch(self, ident: int) -> None:
        """Forget ``ident``'s prefetch; cancel GETs that nobody else wants any more."""
        for index, slot in list(self._slots.items()):
            if ident not in slot.owners:
                continue
            slot.owners.discard(ident)
            if slot.owners or slot.demand:
                continue
            if index in self._queued:
                self._queued.discard(index)
                del self._slots[index]
                slot.done.set()
        for group in list(self._groups):
            if all(not s.owners and not s.demand for s in group.slots):
                group.scope.cancel()
                for slot in group.slots:  # a later demand starts afresh
                    if self._slots.get(slot.unit.index) is slot:
                        del self._slots[slot.unit.index]

    # -- fetching -------------------------------------------------------------------
    def _pump(self) -> None:
        """Start GETs for the most urgent queued units while connections are free."""
        while self._queued and not self._closed:
            head = min((self._slots[i] for i in self._queued), key=lambda s: (s.priority, s.seq))
            busy = len(self._groups)
            if busy >= self.parallel or (head.priority == PREFETCH and busy >= self.parallel - 1):
                return
            group = self._coalesce(head)
            group.prefetch = head.priority == PREFETCH
            for slot in group.slots:
                self._queued.discard(slot.unit.index)
                slot.group = group
            self._groups.add(group)
            self._nursery.start_soon(self._run_group, group)

    def _coalesce(self, head: _Slot) -> _Group:
        """``head`` plus the queued units right after it, up to ``max_range`` bytes."""
        slots = [head]
        i = head.unit.index + 1
        while i in self._queued:
            unit = self._slots[i].unit
            gap = unit.cstart - slots[-1].unit.cend  # -1: gzip spans share a byte
            if not -1 <= gap <= COALESCE_GAP or unit.cend - head.unit.cstart > self.max_range:
                break
            slots.append(self._slots[i])
            i += 1
        return _Group(slots)

    async def _run_group(self, group: _Group) -> None:
        data: bytes | bytearray | None = None
        error: BaseException = trio.ClosedResourceError("prefetch cancelled")
        try:
            with group.scope:
                self.requests += 1
                fetch = self._prefetch_fetch if group.prefetch else self._fetch
                data = await fetch(group.start, group.end)
                self.bytes_fetched += len(data)
                if len(data) != group.end - group.start:
                    raise trio.BrokenResourceError(
                        f"fetch gave {len(data)} of {group.end - group.start} bytes"
                    )
        except Exception as exc:  # a fetch error fails its units' reads, nothing more
            # it outlives this frame (its slots keep it for their readers): the
            # frames it went through let go of their locals, a failed GET's buffer too
            traceback.clear_frames(exc.__traceback__)
            error, data = exc, None
        finally:
            self._groups.discard(group)
            for slot in group.slots:
                # slot.group <-> group.slots is a reference cycle: left in place, a
                # finished slot and its decoded unit live until the cyclic GC's next
                # full pass, far past the cache's budget (issue 12: +100-370 MB RSS)
                slot.group = None
            if data is None:  # failed, cancelled, or the nursery is going away
                for slot in group.slots:
                    self._finish(slot, error)
        if data is None:
            self._pump()
            return
        view = memoryview(data)  # slices without copies; the decoders take buffers
        if self._on_fetched is not None:
            self._on_fetched(group.start, view)
        for slot in group.slots:
            u = slot.unit
            self._nursery.start_soon(
                self._decode_one, slot, view[u.cstart - group.start : u.cend - group.start]
            )
        self._pump()

    async def _decode_one(self, slot: _Slot, piece: memoryview) -> None:
        try:
            out: Decoded
            if self._decode is None:  # stored units (a plain tar): no thread round trip
                out = bytes(piece)
            else:
                out = await run_cpu(self._decode, slot.unit, piece)
        except Exception as exc:
            self._finish(slot, exc)
            return
        self.decodes += 1
        self.cache.put((self._key, slot.unit.index), out)
        slot.data = out
        self._finish(slot, None)

    def _finish(self, slot: _Slot, error: BaseException | None) -> None:
        slot.error = error
        # Only the unit's current slot leaves the queue: a cancelled GET that
        # winds down late must not take off it a new demand for the same unit
        # (which would then wait for ever: a FUSE read stuck until its timeout).
        if self._slots.get(slot.unit.index) is slot:
            del self._slots[slot.unit.index]
            self._queued.discard(slot.unit.index)
        slot.done.set()
