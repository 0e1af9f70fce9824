"""BlobReader and BlobCache over a fake registry client (bytes in memory)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing

from r8imfs import _threads
from r8imfs._units import parse_size
from r8imfs.cache.blobcache import BlobCache, BlobReader, default_cache_dir
from r8imfs.errors import DigestMismatch, TransportError, UsageError
from r8imfs.oci.reference import Repository

REPO = Repository("registry.test", "lib/blob")
KiB = 1024
BLOCK = 16 * KiB


def blob(n: int, seed: int = 0) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeStream:
    def __init__(self, body: bytes, start: int, status: int, chunk: int) -> None:
        self._body = body
        self.start = start
        self.status = status
        self.total: int | None = None
        self._chunk = chunk

    async def chunks(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self._body), self._chunk):
            await trio.lowlevel.checkpoint()
            yield self._body[i : i + self._chunk]


class FakeClient:
    """``open_blob`` over bytes; records every request as (start, end)."""

    def __init__(self, data: bytes, *, ignore_range: bool = False, chunk: int = 4 * KiB) -> None:
        self.data = data
        self.ignore_range = ignore_range
        self.chunk = chunk
        self.calls: list[tuple[int, int | None]] = []
        self.gate: trio.Event | None = None  # set: requests wait for it
        self.fail_next = 0

    @asynccontextmanager
    async def open_blob(
        self, repo: Repository, digest: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[FakeStream]:
        self.calls.append((start, end))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise TransportError("registry.test: connection reset")
        whole = self.ignore_range or (start == 0 and end is None)
        if whole:
            yield FakeStream(self.data, 0, 200, self.chunk)
        else:
            stop = len(self.data) if end is None else end
            yield FakeStream(self.data[start:stop], start, 206, self.chunk)


async def settle() -> None:
    """Until tasks are blocked on something other than a worker thread."""
    for _ in range(5):
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(0.01)  # tasks in run_io threads count as blocked: let them return


@asynccontextmanager
async def cache_at(path: Path, max_bytes: int = 1 << 30, **kw: int) -> AsyncIterator[BlobCache]:
    kw.setdefault("block_size", BLOCK)
    async with BlobCache(path, max_bytes, **kw) as cache:
        yield cache


async def open_reader(
    cache: BlobCache, client: FakeClient, digest: str | None = None
) -> BlobReader:
    return await cache.open(client, REPO, digest or digest_of(client.data), len(client.data))


async def test_reads_ranges_and_eof(tmp_path: Path) -> None:
    data = blob(100 * KiB + 123)
    client = FakeClient(data)
    async with cache_at(tmp_path, readahead=0) as cache, await open_reader(cache, client) as reader:
        assert await reader.read(0, 10) == data[:10]
        assert await reader.read(BLOCK - 5, 10) == data[BLOCK - 5 : BLOCK + 5]
        assert await reader.read(len(data) - 7, 100) == data[-7:]
        assert await reader.read(len(data), 10) == b""
        assert await reader.read(len(data) + 50, 10) == b""
        assert await reader.read(5, 0) == b""
        # Only the blocks touched were fetched, one GET each, aligned.
        assert sorted(client.calls) == [(0, BLOCK), (BLOCK, 2 * BLOCK), (6 * BLOCK, len(data))]
        assert reader.bytes_fetched == 2 * BLOCK + (len(data) - 6 * BLOCK)
        assert cache.bytes_fetched == reader.bytes_fetched


async def test_whole_blob_read_is_verified(tmp_path: Path) -> None:
    data = blob(5 * BLOCK + 1)
    client = FakeClient(data)
    async with cache_at(tmp_path, readahead=0) as cache, await open_reader(cache, client) as reader:
        assert await reader.read(0, len(data)) == data
        assert reader.complete
        assert reader.verified
        assert reader.bytes_fetched == len(data)


async def test_concurrent_reads_of_a_block_share_one_fetch(tmp_path: Path) -> None:
    data = blob(4 * BLOCK)
    client = FakeClient(data)
    client.gate = trio.Event()
    results: list[bytes] = []
    async with cache_at(tmp_path, readahead=0) as cache, await open_reader(cache, client) as reader:

        async def one(i: int) -> None:
            results.append(await reader.read(BLOCK + i * 100, 100))

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(one, i)
            await settle()
            client.gate.set()
        assert client.calls == [(BLOCK, 2 * BLOCK)]
        assert sorted(results) == sorted(
            data[BLOCK + i * 100 : BLOCK + i * 100 + 100] for i in range(10)
        )


async def test_sequential_reads_read_ahead(tmp_path: Path) -> None:
    data = blob(20 * BLOCK)
    client = FakeClient(data)
    async with cache_at(tmp_path, readahead=4) as cache, await open_reader(cache, client) as reader:
        await reader.read(0, 4 * KiB)
        await settle()
        assert client.calls == [(0, BLOCK)]  # one read is not yet a stream
        await reader.read(4 * KiB, 4 * KiB)
        await settle()
        starts = sorted(s for s, _ in client.calls)
        assert starts == [b * BLOCK for b in range(5)]  # blocks 1..4 ahead
        # Reading on keeps the window ahead; nothing is fetched twice.
        pos = 8 * KiB
        while pos < len(data):
            assert await reader.read(pos, 8 * KiB) == data[pos : pos + 8 * KiB]
            pos += 8 * KiB
        await settle()
        assert sorted(s for s, _ in client.calls) == [b * BLOCK for b in range(20)]
        assert reader.bytes_fetched == len(data)
        assert reader.verified


async def test_random_reads_do_not_read_ahead(tmp_path: Path) -> None:
    data = blob(40 * BLOCK)
    client = FakeClient(data)
    async with cache_at(tmp_path, readahead=4) as cache, await open_reader(cache, client) as reader:
        for block in (35, 2, 22, 12):  # further apart than the detector's slack
            await reader.read(block * BLOCK + 10, 100)
        await settle()
        assert sorted(s // BLOCK for s, _ in client.calls) == [2, 12, 22, 35]


async def test_registry_ignoring_range_streams_whole_blob(tmp_path: Path) -> None:
    data = blob(10 * BLOCK + 77)
    client = FakeClient(data, ignore_range=True)
    async with cache_at(tmp_path) as cache:
        async with await open_reader(cache, client) as reader:
            assert await reader.read(3 * BLOCK + 5, 50) == data[3 * BLOCK + 5 : 3 * BLOCK + 55]
            assert reader.complete
            assert reader.verified
            assert len(client.calls) == 1
            assert reader.bytes_fetched == len(data)
            assert await reader.read(0, len(data)) == data
            assert len(client.calls) == 1
        # Remembered: the next fetch of this blob asks for all of it, without Range.
        os.unlink(cache.path_of(digest_of(data)))
        os.unlink(cache.path_of(digest_of(data)).with_suffix(".ranges"))
        async with await open_reader(cache, client) as reader:
            assert await reader.read(7 * BLOCK, 10) == data[7 * BLOCK : 7 * BLOCK + 10]
        assert client.calls[-1] == (0, None)


async def test_concurrent_reads_against_range_ignoring_registry(tmp_path: Path) -> None:
    data = blob(12 * BLOCK)
    client = FakeClient(data, ignore_range=True)
    async with cache_at(tmp_path, readahead=4) as cache, await open_reader(cache, client) as reader:
        async with trio.open_nursery() as nursery:
            for block in range(0, 12, 2):
                nursery.start_soon(reader.read, block * BLOCK, 2 * BLOCK)
        # Several GETs may have started, but only one body is taken in.
        assert reader.bytes_fetched == len(data)
        assert reader.verified


async def test_corrupt_blob_fails_and_is_not_served(tmp_path: Path) -> None:
    data = blob(4 * BLOCK)
    bad = bytearray(data)
    bad[3 * BLOCK + 10] ^= 0xFF
    client = FakeClient(bytes(bad))
    async with cache_at(tmp_path, readahead=0) as cache:
        reader = await open_reader(cache, client, digest_of(data))
        try:
            # Before the blob is complete its ranges cannot be checked (inherent).
            assert await reader.read(0, 3 * BLOCK) == data[: 3 * BLOCK]
            with pytest.raises(DigestMismatch):
                await reader.read(3 * BLOCK, 100)
            with pytest.raises(DigestMismatch):
                await reader.read(0, 10)  # nothing more is served
            # the files go in the failing fetch's task (off the loop), which a waiter
            # that heard of the failure may outrun: allow it a moment
            path = cache.path_of(digest_of(data))
            for _ in range(200):
                if not path.exists():
                    break
                await trio.sleep(0.01)
            assert not path.exists()
        finally:
            await reader.aclose()


async def test_corrupt_whole_download_serves_nothing(tmp_path: Path) -> None:
    data = blob(4 * BLOCK)
    bad = bytearray(data)
    bad[5] ^= 0xFF
    client = FakeClient(bytes(bad), ignore_range=True)
    async with cache_at(tmp_path) as cache, await open_reader(cache, client, digest_of(data)) as r:
        with pytest.raises(DigestMismatch):
            await r.read(2 * BLOCK, 100)
        with pytest.raises(DigestMismatch):
            await r.read(2 * BLOCK, 100)
        assert not cache.path_of(digest_of(data)).exists()


async def test_fetch_errors_reach_the_reader_and_are_retried(tmp_path: Path) -> None:
    data = blob(2 * BLOCK)
    client = FakeClient(data)
    client.fail_next = 1
    async with cache_at(tmp_path, readahead=0) as cache, await open_reader(cache, client) as reader:
        with pytest.raises(TransportError):
            await reader.read(0, 10)
        assert await reader.read(0, 10) == data[:10]


async def test_reuse_across_caches_on_one_directory(tmp_path: Path) -> None:
    data = blob(6 * BLOCK)
    first = FakeClient(data)
    async with cache_at(tmp_path, readahead=0) as cache, await open_reader(cache, first) as reader:
        await reader.read(BLOCK, 2 * BLOCK)
    second = FakeClient(data)
    async with cache_at(tmp_path, readahead=0) as cache, await open_reader(cache, second) as reader:
        assert await reader.read(BLOCK, 2 * BLOCK) == data[BLOCK : 3 * BLOCK]
        assert second.calls == []
        assert await reader.read(0, len(data)) == data
        assert sorted(second.calls) == [(0, BLOCK)] + [
            (b * BLOCK, (b + 1) * BLOCK) for b in (3, 4, 5)
        ]
    third = FakeClient(data)
    async with cache_at(tmp_path) as cache, await open_reader(cache, third) as reader:
        assert reader.verified  # from the record: no hashing, no fetching
        assert await reader.read(0, len(data)) == data
        assert third.calls == []


async def test_ranges_another_process_filled_are_picked_up(tmp_path: Path) -> None:
    data = blob(4 * BLOCK)
    a, b = FakeClient(data), FakeClient(data)
    async with (
        cache_at(tmp_path, readahead=0) as cache_a,
        cache_at(tmp_path, readahead=0) as cache_b,
    ):
        reader_b = await open_reader(cache_b, b)
        try:
            async with await open_reader(cache_a, a) as reader_a:
                await reader_a.read(2 * BLOCK, 10)
            # reader_a's close wrote the record; reader_b sees it on its miss.
            assert await reader_b.read(2 * BLOCK, 10) == data[2 * BLOCK : 2 * BLOCK + 10]
            assert b.calls == []
        finally:
            await reader_b.aclose()


async def test_damaged_complete_copy_is_fetched_again(tmp_path: Path) -> None:
    data = blob(2 * BLOCK)
    async with cache_at(tmp_path, readahead=0) as cache:
        async with await open_reader(cache, FakeClient(data)) as reader:
            await reader.read(0, BLOCK)  # record: block 0 present, not verified
        path = cache.path_of(digest_of(data))
        with path.open("r+b") as f:
            f.seek(BLOCK)
            f.write(data[BLOCK:])  # complete the file behind the record's back...
            f.seek(3)
            f.write(b"XX")  # ...and damage it
        record = path.with_suffix(".ranges")
        record.write_text(record.read_text().replace(f"[[0,{BLOCK}]]", f"[[0,{2 * BLOCK}]]"))
        client = FakeClient(data)
        async with await open_reader(cache, client) as reader:
            assert not reader.complete
            assert await reader.read(0, len(data)) == data
            assert reader.verified


async def test_lru_eviction_keeps_open_and_recent_blobs(tmp_path: Path) -> None:
    blobs = [blob(4 * BLOCK, seed) for seed in range(4)]
    clients = [FakeClient(d) for d in blobs]
    async with cache_at(tmp_path, max_bytes=10 * BLOCK + BLOCK // 2, readahead=0) as cache:
        for i in (0, 1):
            async with await open_reader(cache, clients[i]) as reader:
                await reader.read(0, len(blobs[i]))
            os.utime(cache.path_of(digest_of(blobs[i])), (1000 + i, 1000 + i))
            os.utime(
                cache.path_of(digest_of(blobs[i])).with_suffix(".ranges"), (1000 + i, 1000 + i)
            )
        held = await open_reader(cache, clients[2])
        try:
            await held.read(0, len(blobs[2]))
            os.utime(cache.path_of(digest_of(blobs[2])), (900, 900))  # oldest, but open
            async with await open_reader(cache, clients[3]) as reader:
                await reader.read(0, 2 * BLOCK)
            usage = await cache.evict()
            present = [cache.path_of(digest_of(d)).exists() for d in blobs]
            assert present == [False, True, True, True]
            assert usage <= 10 * BLOCK + BLOCK // 2
        finally:
            await held.aclose()


async def test_writes_past_the_bound_evict_in_the_background(tmp_path: Path) -> None:
    blobs = [blob(4 * BLOCK, seed) for seed in range(3)]
    async with cache_at(tmp_path, max_bytes=9 * BLOCK, readahead=0) as cache:
        for data in blobs:
            async with await open_reader(cache, FakeClient(data)) as reader:
                await reader.read(0, len(data))
        await settle()
        assert not cache.path_of(digest_of(blobs[0])).exists()
        assert cache.path_of(digest_of(blobs[2])).exists()


async def test_a_cancelled_read_does_not_cancel_the_shared_fetch(tmp_path: Path) -> None:
    data = blob(2 * BLOCK)
    client = FakeClient(data)
    client.gate = trio.Event()
    async with cache_at(tmp_path, readahead=0) as cache, await open_reader(cache, client) as reader:
        scope = trio.CancelScope()

        async def read_then_give_up() -> None:
            with scope:
                await reader.read(10, 10)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_then_give_up)
            await settle()
            assert client.calls == [(0, BLOCK)]  # the fetch is waiting at the gate
            scope.cancel()
        client.gate.set()
        assert await reader.read(10, 10) == data[10:20]
        assert client.calls == [(0, BLOCK)]


async def test_same_digest_opened_twice_shares_one_reader(tmp_path: Path) -> None:
    data = blob(2 * BLOCK)
    client = FakeClient(data)
    async with cache_at(tmp_path) as cache:
        r1, r2 = await open_reader(cache, client), await open_reader(cache, client)
        assert r1 is r2
        await r1.aclose()
        assert await r2.read(0, 5) == data[:5]
        await r2.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await r2.read(0, 5)


async def test_closing_with_fetches_in_flight(tmp_path: Path) -> None:
    data = blob(8 * BLOCK)
    client = FakeClient(data)
    client.gate = trio.Event()  # never set: fetches hang until cancelled
    async with cache_at(tmp_path) as cache:
        reader = await open_reader(cache, client)
        with trio.move_on_after(0.05):
            await reader.read(0, BLOCK)
        await reader.aclose()
    assert not [name for _, _, names in os.walk(tmp_path) for name in names if ".tmp" in name]


async def test_sync_file_from_a_worker_thread(tmp_path: Path) -> None:
    data = blob(3 * BLOCK + 5)
    client = FakeClient(data)
    async with cache_at(tmp_path) as cache, await open_reader(cache, client) as reader:
        sync = reader.sync_file()
        assert sync.size == len(data)

        def in_thread() -> bytes:
            return sync.read_at(BLOCK - 3, BLOCK) + sync.read_at(len(data) - 2, 10)

        got = await _threads.run_sync(in_thread)
        assert got == data[BLOCK - 3 : 2 * BLOCK - 3] + data[-2:]


async def test_sync_file_fetch_at_gets_just_the_range(tmp_path: Path) -> None:
    data = blob(4 * BLOCK)
    client = FakeClient(data)
    async with cache_at(tmp_path, readahead=4) as cache, await open_reader(cache, client) as reader:
        sync = reader.sync_file()

        def in_thread() -> bytes:
            return bytes(sync.fetch_at(100, 600)) + bytes(sync.fetch_at(3 * BLOCK, 2 * BLOCK))

        got = await _threads.run_sync(in_thread)
        assert got == data[100:700] + data[3 * BLOCK :]
        # one GET each, of the range alone (clipped at the end): no block, no readahead
        assert client.calls == [(100, 700), (3 * BLOCK, 4 * BLOCK)]
        assert reader.bytes_fetched == 600 + BLOCK


async def test_thread_bridge_refuses_deadlocking_uses() -> None:
    async def nested() -> int:
        return await _threads.run_sync(int, "3")

    def calls_back() -> int:
        return _threads.from_thread(nested)

    with pytest.raises(RuntimeError, match="deadlock"):
        await _threads.run_sync(calls_back)

    async def noop() -> None:
        pass

    def leaf() -> None:
        _threads.from_thread(noop)

    with pytest.raises(RuntimeError, match="deadlock"):
        await _threads.run_io(leaf)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("10G", 10 << 30),
        ("500M", 500 << 20),
        ("500m", 500 << 20),
        ("64KiB", 64 << 10),
        ("1.5GB", 3 << 29),
        ("2 T", 2 << 40),
        ("100B", 100),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "-1G", "10X", "ten"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "r8imfs"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "r8imfs"


# -- fetch_range: exact ranges for the unit reader (issue 12) ------------------------


async def test_fetch_range_gets_exactly_the_range_and_stores_it_behind(tmp_path: Path) -> None:
    data = blob(6 * BLOCK)
    client = FakeClient(data)
    async with cache_at(tmp_path, readahead=4) as cache, await open_reader(cache, client) as reader:
        for start, end in [(BLOCK + 5, 2 * BLOCK + 9), (2 * BLOCK + 9, 3 * BLOCK + 1)]:
            assert await reader.fetch_range(start, end) == data[start:end]
        # one GET each, of exactly the range: no block edges, no sequential readahead
        assert client.calls == [(BLOCK + 5, 2 * BLOCK + 9), (2 * BLOCK + 9, 3 * BLOCK + 1)]
        assert reader.bytes_fetched == 3 * BLOCK + 1 - (BLOCK + 5)
        await settle()
        assert await reader.fetch_range(BLOCK + 100, 3 * BLOCK) == data[BLOCK + 100 : 3 * BLOCK]
        assert len(client.calls) == 2  # stored: served from the data file


async def test_fetch_range_pieces_verify_the_blob_out_of_order(tmp_path: Path) -> None:
    data = blob(5 * BLOCK + 123)
    client = FakeClient(data)
    cuts = [0, 7000, 3 * BLOCK, 3 * BLOCK + 1, 4 * BLOCK + 77, len(data)]
    pieces = list(zip(cuts, cuts[1:], strict=False))
    async with cache_at(tmp_path) as cache, await open_reader(cache, client) as reader:
        for start, end in reversed(pieces):  # the frontier waits for the first piece
            assert await reader.fetch_range(start, end) == data[start:end]
        await settle()
        assert reader.complete
        assert reader.verified
        assert len(client.calls) == len(pieces)


async def test_fetch_range_of_a_corrupt_blob_ends_in_refusal(tmp_path: Path) -> None:
    data = blob(4 * BLOCK)
    bad = bytearray(data)
    bad[2 * BLOCK + 3] ^= 0xFF
    client = FakeClient(bytes(bad))
    async with cache_at(tmp_path) as cache:
        reader = await open_reader(cache, client, digest_of(data))
        try:
            await reader.fetch_range(0, 2 * BLOCK)
            await reader.fetch_range(2 * BLOCK, 4 * BLOCK)  # unverifiable yet (inherent)
            await settle()  # the frontier reaches the end and the digest is wrong
            with pytest.raises(DigestMismatch):
                await reader.fetch_range(0, 10)
            assert not cache.path_of(digest_of(data)).exists()
        finally:
            await reader.aclose()


async def test_fetch_range_from_a_registry_ignoring_range(tmp_path: Path) -> None:
    data = blob(6 * BLOCK + 5)
    client = FakeClient(data, ignore_range=True)
    async with cache_at(tmp_path) as cache, await open_reader(cache, client) as reader:
        assert await reader.fetch_range(BLOCK, 2 * BLOCK + 3) == data[BLOCK : 2 * BLOCK + 3]
        assert reader.complete
        assert reader.verified
        assert await reader.fetch_range(5 * BLOCK, 6 * BLOCK + 5) == data[5 * BLOCK :]
        assert len(client.calls) == 1


async def test_fetch_range_checks_blocks_of_a_blob_verified_before(tmp_path: Path) -> None:
    data = blob(4 * BLOCK)
    client = FakeClient(data)
    async with cache_at(tmp_path) as cache:
        async with await open_reader(cache, client) as reader:
            assert await reader.read(0, len(data)) == data
            await settle()
            assert reader.verified
        os.unlink(cache.path_of(digest_of(data)))  # evicted; the block hashes stay
        os.unlink(cache.path_of(digest_of(data)).with_suffix(".ranges"))
        bad = bytearray(data)
        bad[BLOCK + 9] ^= 0xFF
        client.data = bytes(bad)
        async with await open_reader(cache, client, digest_of(data)) as reader:
            assert (
                await reader.fetch_range(2 * BLOCK + 1, 2 * BLOCK + 50)
                == data[2 * BLOCK + 1 : 2 * BLOCK + 50]
            )
            assert client.calls[-1] == (2 * BLOCK, 3 * BLOCK)  # widened to its block, checked
            with pytest.raises(DigestMismatch):
                await reader.fetch_range(BLOCK + 1, BLOCK + 20)
