"""The fetch scheduler over a fake fetch function (one layer, bytes in memory).

Units here are 1,000 compressed bytes each; "decoding" maps every byte through
a table, so a misplaced slice shows. Fetches can be gated: a test decides
when each GET completes and sees which GETs were started, in what order, and
which were cancelled.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import weakref
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from r8imfs.engine.codecs.units import Decoder, Unit, UnitTable, fixed_units
from r8imfs.errors import CorruptLayer, TransportError
from r8imfs.image.fetchplan import DecodedCache, ReadStream, UnitReader, _Slot

U = 1000
N = 40
BLOB = bytes((i * 7 + i // 251) % 256 for i in range(U * N))
FLIP = bytes(255 - i for i in range(256))
PLAIN = BLOB.translate(FLIP)  # the "uncompressed layer"


def table(n: int = N) -> UnitTable:
    return UnitTable([Unit(i, i * U, (i + 1) * U, i * U, U) for i in range(n)], n * U)


def decode(unit: Unit, data: bytes | memoryview) -> bytes:
    assert len(data) == unit.csize
    return bytes(data).translate(FLIP)


def span(first: int, last: int) -> tuple[int, int]:
    """The compressed range of units ``first..last``."""
    return first * U, (last + 1) * U


class Fetcher:
    """Records every GET; gated ones wait until ``release``; notes cancellations."""

    def __init__(self, gated: bool = False) -> None:
        self.gated = gated
        self.calls: list[tuple[int, int]] = []
        self.cancelled: list[tuple[int, int]] = []
        self.gates: dict[tuple[int, int], trio.Event] = {}
        self.fail: set[tuple[int, int]] = set()

    async def __call__(self, start: int, end: int) -> bytes:
        key = (start, end)
        self.calls.append(key)
        try:
            if self.gated:
                await self.gates.setdefault(key, trio.Event()).wait()
            else:
                await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            self.cancelled.append(key)
            raise
        if key in self.fail:
            self.fail.discard(key)
            raise TransportError("connection reset")
        return BLOB[start:end]

    def release(self, key: tuple[int, int]) -> None:
        self.gates.setdefault(key, trio.Event()).set()


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


class Results:
    """What demand tasks read, awaited by count (a task waiting on a decode
    thread counts as blocked, so ``settle`` alone does not wait for it)."""

    def __init__(self) -> None:
        self.send, self.recv = trio.open_memory_channel[bytes](100)

    async def demand(self, reader: UnitReader, offset: int, size: int) -> None:
        await self.send.send(bytes(await reader.read(offset, size)))

    async def take(self, n: int) -> list[bytes]:
        with trio.fail_after(20):
            return [await self.recv.receive() for _ in range(n)]


async def test_reads_return_the_decoded_bytes() -> None:
    fetch = Fetcher()
    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), fetch, decode, nursery)
        for off, size in ((0, 10), (995, 10), (U * 3 - 1, 2 * U + 2), (U * N - 5, 100)):
            assert await reader.read(off, size) == PLAIN[off : off + size]
        assert await reader.read(U * N, 10) == b""
        reader.close()


async def test_adjacent_needs_are_coalesced_into_one_range() -> None:
    fetch = Fetcher()
    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), fetch, decode, nursery, max_range=10 * U)
        await reader.read(2 * U + 500, 3 * U)  # units 2..5
        assert fetch.calls == [span(2, 5)]
        reader.close()


async def test_a_coalesced_range_stays_within_max_range() -> None:
    fetch = Fetcher()
    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), fetch, decode, nursery, max_range=2 * U)
        assert await reader.read(0, 6 * U) == PLAIN[: 6 * U]
        assert sorted(fetch.calls) == [span(0, 1), span(2, 3), span(4, 5)]
        reader.close()


async def test_demand_goes_before_prefetch() -> None:
    fetch = Fetcher(gated=True)
    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), fetch, decode, nursery, parallel=3, max_range=U)
        stream = reader.stream()
        reader.prefetch_units(range(10, 20), stream)
        await settle()
        # prefetch may hold parallel - 1 GETs: one stays free for demand
        assert sorted(fetch.calls) == [span(10, 10), span(11, 11)]
        results = Results()
        nursery.start_soon(results.demand, reader, 0, 10)
        await settle()
        assert fetch.calls[2] == span(0, 0)  # at once, ahead of 12..19 queued before it
        # every GET is busy: this demand queues, behind nothing
        nursery.start_soon(results.demand, reader, U, 10)
        await settle()
        assert len(fetch.calls) == 3
        fetch.release(span(10, 10))  # a prefetch GET ends: its connection goes to demand
        await settle()
        assert fetch.calls[3] == span(1, 1)
        fetch.release(span(0, 0))
        fetch.release(span(1, 1))
        got = await results.take(2)
        await settle()
        assert sorted(got) == sorted([PLAIN[:10], PLAIN[U : U + 10]])
        assert fetch.calls[4] == span(12, 12)  # then prefetch resumes, in order
        stream.close()
        reader.close()


async def test_a_prefetched_unit_a_reader_waits_for_is_promoted() -> None:
    fetch = Fetcher(gated=True)
    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), fetch, decode, nursery, parallel=2, max_range=U)
        stream = reader.stream()
        reader.prefetch_units(range(10, 20), stream)
        await settle()
        assert fetch.calls == [span(10, 10)]
        nursery.start_soon(reader.read, 15 * U, 10)  # queued as prefetch, now demanded
        await settle()
        assert fetch.calls[1] == span(15, 15)
        for key in list(fetch.gates):
            fetch.release(key)
        stream.close()
        reader.close()


async def test_window_doubles_on_sequential_reads_and_resets_on_a_jump() -> None:
    fetch = Fetcher()
    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), fetch, decode, nursery, max_window=8 * U, max_range=U, slack=U)
        stream = reader.stream()
        windows = []
        pos = 0
        for _ in range(16):  # 250-byte reads: four per unit
            assert await stream.read(pos, 250) == PLAIN[pos : pos + 250]
            windows.append(stream.window)
            pos += 250
        # the first read may be random; then one unit, doubling per unit entered, bounded
        assert windows[:4] == [0, U, U, U]
        assert windows[4:16:4] == [2 * U, 4 * U, 8 * U]
        assert max(windows) == 8 * U
        await settle()
        ahead = {start // U for start, _ in fetch.calls}
        assert ahead >= set(range(0, 12))  # read ahead 8 units past the end of unit 3
        assert max(ahead) == 11
        before = len(fetch.calls)
        assert await stream.read(30 * U + 1, 100) == PLAIN[30 * U + 1 : 30 * U + 101]
        assert stream.window == 0  # random: just the unit it needs
        await settle()
        assert fetch.calls[before:] == [span(30, 30)]
        stream.close()
        reader.close()


async def test_sequential_readers_share_the_decoded_budget() -> None:
    """Each stream reading ahead gets its share of the cache, less the unit it
    reads: two readers read ahead half as far as one, and what they read ahead
    is still cached when they get there (nothing fetched twice)."""
    fetch = Fetcher()
    async with trio.open_nursery() as nursery:
        cache = DecodedCache(budget=10 * U)
        reader = UnitReader(
            table(), fetch, decode, nursery, cache=cache, max_window=8 * U, max_range=U, slack=U
        )
        one, two = reader.stream(), reader.stream()
        windows: dict[object, list[int]] = {one: [], two: []}

        async def step(stream: ReadStream, pos: int) -> None:
            assert await stream.read(pos, 500) == PLAIN[pos : pos + 500]
            windows[stream].append(stream.window)
            await settle()

        for pos in range(0, 12 * U, 500):  # side by side, 20 units apart
            await step(one, pos)
            await step(two, 20 * U + pos)
        assert cache.readers_ahead == 2
        assert max(windows[one] + windows[two]) == 4 * U  # 10 / 2 - 1 each
        fetched = [u for s, e in fetch.calls for u in range(s // U, e // U)]
        assert len(fetched) == len(set(fetched)), fetch.calls  # nothing evicted unread
        two.close()
        assert cache.readers_ahead == 1
        for pos in range(12 * U, 16 * U, 500):
            await step(one, pos)
        assert one.window == 8 * U  # alone again: max_window (10 - 1 >= 8)
        one.close()
        assert cache.readers_ahead == 0
        reader.close()


async def test_a_jump_leaves_the_readers_ahead() -> None:
    fetch = Fetcher()
    async with trio.open_nursery() as nursery:
        cache = DecodedCache(budget=10 * U)
        reader = UnitReader(table(), fetch, decode, nursery, cache=cache, max_range=U, slack=U)
        stream = reader.stream()
        for pos in range(0, 2 * U, 500):
            await stream.read(pos, 500)
        assert stream.window and cache.readers_ahead == 1
        await stream.read(30 * U, 10)
        assert stream.window == 0 and cache.readers_ahead == 0
        stream.close()
        stream.close()
        assert cache.readers_ahead == 0
        reader.close()


async def test_a_stream_reads_ahead_only_within_its_file_and_lets_go_at_its_end() -> None:
    """A file's stream stops at the file's end: nothing past it is fetched, and
    once read to its end (and left open) it no longer holds a share of the cache."""
    fetch = Fetcher()
    async with trio.open_nursery() as nursery:
        cache = DecodedCache(budget=20 * U)
        reader = UnitReader(
            table(), fetch, decode, nursery, cache=cache, max_window=8 * U, max_range=U, slack=U
        )
        stream = reader.stream(end=10 * U)
        other = reader.stream()  # to the layer's end
        for pos in range(0, 10 * U, 500):
            assert await stream.read(pos, 500) == PLAIN[pos : pos + 500]
            if U <= pos < 9 * U:  # (the first read may be random)
                assert stream.window
            await settle()
        assert stream.window == 0 and cache.readers_ahead == 0
        assert max(end for _, end in fetch.calls) == 10 * U  # nothing past the file
        for pos in range(10 * U, 14 * U, 500):
            await other.read(pos, 500)
        assert other.window == 8 * U  # the whole budget's share (20 - 1 >= 8)
        assert cache.readers_ahead == 1
        stream.close()
        other.close()
        reader.close()


async def test_a_wide_window_is_topped_up_a_whole_get_at_a_time() -> None:
    """Once a sequential reader's window is ``max_range`` wide, read-ahead goes out
    as GETs of ``max_range``, not one unit per GET as the reader moves on."""
    fetch = Fetcher()
    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), fetch, decode, nursery, max_window=8 * U, max_range=4 * U)
        stream = reader.stream()
        for pos in range(0, N * U, 500):
            assert await stream.read(pos, 500) == PLAIN[pos : pos + 500]
            await settle()
        calls = sorted(fetch.calls)
        assert [s for s, _ in calls] == [s for s, _ in fetch.calls]  # in order
        assert [e for _, e in calls[:-1]] == [s for s, _ in calls[1:]]  # each unit once
        units = [(e - s) // U for s, e in calls]
        grown = [n for (s, e), n in zip(calls, units, strict=True) if s >= 8 * U and e < N * U]
        assert len(grown) >= 5 and all(n == 4 for n in grown), units
        stream.close()
        reader.close()


async def test_a_jump_drops_the_queued_prefetch() -> None:
    fetch = Fetcher(gated=True)
    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), fetch, decode, nursery, parallel=2, max_range=U)
        stream = reader.stream()
        reader.prefetch_units(range(5, 15), stream)
        await settle()
        assert fetch.calls == [span(5, 5)]
        nursery.start_soon(stream.read, 30 * U, 10)  # a random read by the same stream
        await settle()
        assert span(5, 5) in fetch.cancelled  # nobody wants it any more
        fetch.release(span(30, 30))
        await settle()
        assert fetch.calls[1:] == [span(30, 30)]  # and 6..14 never went out
        assert not reader._queued
        stream.close()
        reader.close()


async def test_closing_a_stream_cancels_its_prefetch() -> None:
    fetch = Fetcher(gated=True)
    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), fetch, decode, nursery, parallel=3, max_range=U)
        stream, other = reader.stream(), reader.stream()
        reader.prefetch_units(range(0, 6), stream)
        reader.prefetch_units(range(1, 2), other)  # unit 1 is wanted by another file too
        await settle()
        assert sorted(fetch.calls) == [span(0, 0), span(1, 1)]
        stream.close()
        await settle()
        assert fetch.cancelled == [span(0, 0)]  # unit 1 lives on for the other stream
        assert not reader._queued
        fetch.release(span(1, 1))
        await settle()
        assert await reader.read(U, 5) == PLAIN[U : U + 5]  # decoded and cached
        assert len(fetch.calls) == 2
        other.close()
        reader.close()


async def test_a_demanded_unit_is_not_cancelled_with_the_prefetch() -> None:
    fetch = Fetcher(gated=True)
    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), fetch, decode, nursery, parallel=3, max_range=U)
        stream = reader.stream()
        reader.prefetch_units(range(0, 2), stream)
        await settle()
        results = Results()
        nursery.start_soon(results.demand, reader, 5, 5)
        await settle()
        stream.close()
        await settle()
        assert fetch.cancelled == [span(1, 1)]
        fetch.release(span(0, 0))
        assert await results.take(1) == [PLAIN[5:10]]
        reader.close()


async def test_a_failed_fetch_fails_its_reads_and_is_retried_later() -> None:
    fetch = Fetcher()
    fetch.fail.add(span(3, 3))
    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), fetch, decode, nursery, max_range=U)
        with pytest.raises(TransportError):
            await reader.read(3 * U, 10)
        assert await reader.read(3 * U, 10) == PLAIN[3 * U : 3 * U + 10]
        reader.close()


async def test_a_failed_decode_is_an_error_not_bytes() -> None:
    def bad(unit: Unit, data: bytes | memoryview) -> bytes:
        raise CorruptLayer(f"unit {unit.index} does not decompress")

    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), Fetcher(), bad, nursery)
        with pytest.raises(CorruptLayer):
            await reader.read(0, 10)
        reader.close()


async def test_a_closed_reader_refuses_reads_and_wakes_its_waiters() -> None:
    fetch = Fetcher(gated=True)
    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), fetch, decode, nursery, parallel=2, max_range=U)
        errors: list[BaseException] = []

        async def demand(unit: int) -> None:
            try:
                await reader.read(unit * U, 10)
            except trio.ClosedResourceError as exc:
                errors.append(exc)

        for unit in (0, 1, 2):
            nursery.start_soon(demand, unit)
        await settle()
        reader.close()
        await settle()
        assert len(errors) == 3
        with pytest.raises(trio.ClosedResourceError):
            await reader.read(0, 1)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="run_cpu has one thread per core")
async def test_units_decode_in_parallel() -> None:
    """Two units of one GET decode at the same time: each decode waits at a barrier
    that only opens when both are inside (serial decoding would break it)."""
    barrier = threading.Barrier(2, timeout=20)

    def meeting(unit: Unit, data: bytes | memoryview) -> bytes:
        barrier.wait()
        return decode(unit, data)

    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), Fetcher(), meeting, nursery)
        assert await reader.read(0, 2 * U) == PLAIN[: 2 * U]
        reader.close()


def test_decoded_cache_stays_within_its_budget() -> None:
    cache = DecodedCache(budget=3 * U)
    for i in range(3):
        cache.put(("l", i), bytes(U))
    assert cache.get(("l", 0)) is not None  # touched: now the newest
    cache.put(("l", 3), bytes(U))
    assert cache.size == 3 * U
    assert ("l", 0) in cache and ("l", 1) not in cache and ("l", 3) in cache
    cache.put(("l", 9), bytes(4 * U))  # bigger than the budget: not kept
    assert ("l", 9) not in cache and cache.size <= 3 * U


async def test_what_a_sequential_reader_read_past_goes_first() -> None:
    fetch = Fetcher()
    async with trio.open_nursery() as nursery:
        cache = DecodedCache(budget=10 * U)
        reader = UnitReader(table(), fetch, decode, nursery, cache=cache, max_range=U, slack=U)
        await reader.read(30 * U, 10)  # a random read: unit 30 stays the oldest
        stream = reader.stream()
        for pos in range(0, 3 * U, 500):
            await stream.read(pos, 500)
            await settle()
        order = [key[1] for key in cache._data]  # type: ignore[index]  # first out first
        # units 0-2, read to their end sequentially, go before 30 (the oldest
        # read) and before what is read ahead (3 on)
        assert order[:4] == [2, 1, 0, 30], order
        stream.close()
        reader.close()


async def test_iter_range_yields_in_order_and_reads_ahead_within_the_window() -> None:
    fetch = Fetcher()
    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), fetch, decode, nursery, max_range=U, max_window=4 * U)
        pieces = []
        async with contextlib.aclosing(reader.iter_range(500, 20 * U + 10)) as chunks:
            async for piece in chunks:
                pieces.append(piece)
                await settle()
                done = len(pieces)  # units 0..done-1 consumed
                assert max(s // U for s, _ in fetch.calls) <= done - 1 + 4
        assert b"".join(pieces) == PLAIN[500 : 20 * U + 10]
        assert sorted(fetch.calls) == [span(i, i) for i in range(21)]  # each once
        assert reader.cache.size == 21 * U  # kept for other readers
        reader.close()


async def test_iter_range_reads_ahead_a_whole_get_at_a_time() -> None:
    fetch = Fetcher()
    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), fetch, decode, nursery, max_range=3 * U, max_window=6 * U)
        pieces = []
        async with contextlib.aclosing(reader.iter_range(0, N * U)) as chunks:
            async for piece in chunks:
                pieces.append(piece)
                await settle()
                assert max(s // U for s, _ in fetch.calls) <= len(pieces) - 1 + 6  # the window
        assert b"".join(pieces) == PLAIN
        calls = sorted(fetch.calls)
        assert [e for _, e in calls[:-1]] == [s for s, _ in calls[1:]]  # each unit once
        units = [(e - s) // U for s, e in calls]
        assert all(n == 3 for n in units[1:-1]), units
        reader.close()


async def test_a_single_pass_need_not_keep_what_it_read() -> None:
    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), Fetcher(), decode, nursery, max_range=U, max_window=4 * U)
        async with contextlib.aclosing(reader.iter_range(0, N * U, keep=False)) as chunks:
            async for _ in chunks:
                assert reader.cache.size <= 5 * U  # the window ahead, not what is behind
        reader.close()


async def test_leaving_iter_range_early_cancels_its_read_ahead() -> None:
    fetch = Fetcher(gated=True)
    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), fetch, decode, nursery, parallel=3, max_range=U)
        fetch.release(span(0, 0))
        async with contextlib.aclosing(reader.iter_range(0, N * U)) as chunks:
            async for piece in chunks:
                assert piece == PLAIN[:U]
                break
        await settle()
        assert sorted(fetch.cancelled) == [span(1, 1), span(2, 2)]
        assert not reader._queued
        reader.close()


async def test_stored_units_of_a_plain_tar_are_served_as_fetched() -> None:
    fetch = Fetcher()
    async with trio.open_nursery() as nursery:
        reader = UnitReader(fixed_units(len(BLOB) - 7, 3 * U), fetch, None, nursery)
        assert len(reader.table) == 14 and reader.table[13].usize == N * U - 7 - 13 * 3 * U
        assert await reader.read(5 * U + 3, 4 * U) == BLOB[5 * U + 3 : 9 * U + 3]
        assert await reader.read(len(BLOB) - 20, 100) == BLOB[-20:-7]
        reader.close()


async def test_read_ahead_goes_through_the_prefetch_fetcher_demand_does_not() -> None:
    demand, ahead = Fetcher(), Fetcher()
    async with trio.open_nursery() as nursery:
        reader = UnitReader(
            table(), demand, decode, nursery, max_window=4 * U, max_range=U, prefetch_fetch=ahead
        )
        stream = reader.stream()
        for pos in range(0, 3 * U, 500):  # sequential: the window opens
            assert await stream.read(pos, 500) == PLAIN[pos : pos + 500]
        await settle()
        assert demand.calls and ahead.calls
        assert {start // U for start, _ in demand.calls} <= {0, 1, 2}
        assert {start // U for start, _ in ahead.calls} >= {3, 4, 5}
        assert not set(demand.calls) & set(ahead.calls)
        stream.close()
        reader.close()


async def test_units_a_few_bytes_apart_share_a_get() -> None:
    """A TOC layer's chunks of two files have a tar header's frame between them."""
    units = [Unit(0, 0, 900, 0, U), Unit(1, 1000, 1900, U, U), Unit(2, 30_000, 30_900, 2 * U, U)]
    fetch = Fetcher()

    def ungapped(unit: Unit, data: bytes | memoryview) -> bytes:
        assert bytes(data) == BLOB[unit.cstart : unit.cend]
        return bytes(U)

    async with trio.open_nursery() as nursery:
        reader = UnitReader(UnitTable(units, 3 * U), fetch, ungapped, nursery, max_range=10**6)
        assert await reader.read(0, 3 * U) == bytes(3 * U)
        assert sorted(fetch.calls) == [(0, 1900), (30_000, 30_900)]


class Watched(bytearray):
    """A GET's buffer whose release a test can see (weak references)."""


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.usefixtures("no_cyclic_gc")
@pytest.mark.parametrize("decoder", [decode, None], ids=["decoded", "stored"])
async def test_what_reads_are_done_with_goes_without_the_cyclic_gc(decoder: Decoder | None) -> None:
    """Issue 12: GET buffers and finished units are freed by reference counting
    alone. Anything a reference cycle holds waits for the GC's next full pass,
    which a long copy reaches rarely: a slot <-> group cycle kept every decoded
    unit alive that long, hundreds of MB past the cache's budget."""
    buffers: list[weakref.ref[Watched]] = []

    async def fetch(start: int, end: int) -> Watched:
        await trio.lowlevel.checkpoint()
        buf = Watched(BLOB[start:end])
        buffers.append(weakref.ref(buf))
        return buf

    units, want = (table(), PLAIN) if decoder is not None else (fixed_units(N * U, U), BLOB)
    async with trio.open_nursery() as nursery:
        reader = UnitReader(units, fetch, decoder, nursery, cache=DecodedCache(0), max_range=4 * U)
        stream = reader.stream()
        for off in range(0, N * U, 500):  # sequential: GETs run ahead of the reads
            assert await stream.read(off, 500) == want[off : off + 500]
        stream.close()
        await settle()
        assert len(buffers) > 1
        assert [r for r in buffers if r() is not None] == []
        assert [o for o in gc.get_objects() if isinstance(o, _Slot)] == []
        reader.close()


@pytest.mark.usefixtures("no_cyclic_gc")
async def test_a_failed_get_lets_go_of_its_buffer() -> None:
    """The error a failed GET leaves its readers does not keep the buffer the
    GET was filling (its traceback's frames are cleared)."""
    buffers: list[weakref.ref[Watched]] = []

    async def fetch(start: int, end: int) -> bytes:
        buf = Watched(end - start)
        buffers.append(weakref.ref(buf))
        await trio.lowlevel.checkpoint()
        raise TransportError(f"connection reset after {len(buf) // 2} bytes")

    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), fetch, decode, nursery)
        with pytest.raises(TransportError):
            await reader.read(0, 2 * U)
        await settle()
        assert len(buffers) == 1 and buffers[0]() is None
        reader.close()


def small_files(sizes: list[int]) -> UnitTable:
    """Units of the given compressed sizes (decoded: the same size), 100-byte gaps
    between them (a TOC layer's tar-header frames)."""
    units, c, u = [], 0, 0
    for i, size in enumerate(sizes):
        units.append(Unit(i, c, c + size, u, size))
        c, u = c + size + 100, u + size
    return UnitTable(units, u)


def stored(unit: Unit, data: bytes | memoryview) -> bytes:
    return bytes(data)


WIDE = bytes(i % 251 for i in range(200_000))


class WideFetcher(Fetcher):
    async def __call__(self, start: int, end: int) -> bytes:
        await super().__call__(start, end)
        return WIDE[start:end]


async def test_a_small_miss_reads_around_its_small_neighbours_in_one_get() -> None:
    fetch = WideFetcher()
    units = small_files([U] * 30)
    async with trio.open_nursery() as nursery:
        reader = UnitReader(units, fetch, stored, nursery, read_around=10 * U)
        for i in range(20):  # file by file, a new open file each time
            stream = reader.stream()
            assert await stream.read(units[i].ustart, U) == WIDE[units[i].cstart : units[i].cend]
            stream.close()
        await settle()
        # the budget is measured from the miss: 9 units (9,800 bytes) per GET
        runs = [(0, 8), (9, 17), (18, 26)]
        assert fetch.calls == [(units[a].cstart, units[b].cend) for a, b in runs]
        reader.close()


async def test_read_around_stops_at_a_big_unit_and_is_off_by_default() -> None:
    fetch = WideFetcher()
    units = small_files([U, U, 70_000, U, U])
    async with trio.open_nursery() as nursery:
        reader = UnitReader(units, fetch, stored, nursery, read_around=10**6)
        await reader.read(0, 10)
        await settle()
        assert fetch.calls == [(0, units[1].cend)]  # not the 70 kB unit, nor past it
        fetch.calls.clear()
        await reader.read(units[2].ustart, 10)  # a big unit: just itself
        await settle()
        assert fetch.calls == [(units[2].cstart, units[2].cend)]
        reader.close()
    fetch = WideFetcher()
    async with trio.open_nursery() as nursery:
        reader = UnitReader(small_files([U] * 5), fetch, stored, nursery)
        await reader.read(0, 10)
        await settle()
        assert fetch.calls == [(0, U)]
        reader.close()


async def test_describe_says_where_a_read_waits() -> None:
    fetch = Fetcher(gated=True)
    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), fetch, decode, nursery, parallel=2, max_range=U)
        results = Results()
        for unit in (0, 1, 2):
            nursery.start_soon(results.demand, reader, unit * U, 10)
        await settle()
        said = reader.describe(0, 3 * U)  # (which two went first is trio's choice)
        assert said.count(": in a GET of ") == 2
        assert said.count(": queued (priority 0, 1 waiting)") == 1
        assert said.endswith("2 GET(s) in flight, 1 unit(s) queued")
        for key in [span(0, 0), span(1, 1), span(2, 2)]:
            fetch.release(key)
        await results.take(3)
        assert reader.describe(0, 10) == "unit 0: cached; 0 GET(s) in flight, 0 unit(s) queued"
        reader.close()


async def test_a_cancelled_get_ending_late_leaves_a_new_demand_for_its_unit_queued() -> None:
    """A prefetch GET is cancelled (its stream closed) and, before its task has
    wound down, a reader wants one of its units again while every connection is
    busy: the new demand queues. The old GET's end must not take it off the
    queue, or it would wait for ever (a FUSE read stuck until its timeout)."""
    fetch = Fetcher(gated=True)
    async with trio.open_nursery() as nursery:
        reader = UnitReader(table(), fetch, decode, nursery, parallel=2, max_range=U)
        stream = reader.stream()
        reader.prefetch_units(range(5, 6), stream)
        await settle()
        nursery.start_soon(reader.read, 0, 10)  # the other connection: a demand
        await settle()
        assert sorted(fetch.calls) == [span(0, 0), span(5, 5)]
        stream.close()  # unit 5's GET is cancelled; its task has not run since
        again = reader._want(5)  # wanted again at once, as a read would
        reader._pump()
        assert again is not None and 5 in reader._queued  # both connections busy
        await settle()  # the cancelled GET winds down
        assert 5 in reader._queued or again.group is not None
        fetch.release(span(0, 0))
        fetch.release(span(5, 5))
        with trio.fail_after(5):
            assert await reader._wait(5, again) == PLAIN[5 * U : 6 * U]
        reader.close()
