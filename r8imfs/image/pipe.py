"""Run sync stream consumers (tarfile, zlib, zstd) over an async byte stream.

``consume_stream(source, fn)`` feeds the chunks of an async iterator (a blob
download) to ``fn(fileobj)`` running in a worker thread: the download and
the decompression overlap, about ``buffer`` batches sit in memory, and the
trio loop never decompresses.

The hand-off costs the loop a ``put`` on a thread-safe queue and the worker
a ``get``: the worker never waits on the loop for bytes that already
arrived. (Asking the loop for each piece, ``from_thread``, cost a round trip
through it: a wakeup, a task, a reply, and the GIL taken back twice, each
possibly behind a busy thread; for a 1 GiB layer the worker spent seconds
waiting on those.) Back-pressure: at most ``buffer * PIECE`` bytes queued
(counted in bytes, not batches: a chunk bigger than ``PIECE`` is a batch of
its own, and the blob's chunks are 4 MiB, ``registry._rawbody.READ``); a
loop that finds the queue full waits for the worker's next ``get`` to wake
it (``_Handoff``).
Chunks are batched to about ``PIECE`` bytes first, as lists, not joined:
HTTP bodies arrive in pieces of 1 MiB or less, and a join is a copy; only
runs of small pieces are joined (``SMALL``).

Failure rules: a network error in the download wins over whatever the
consumer said about the truncated stream it then saw (the root cause is
reported); a consumer that stops early stops the download. Errors come out
bare, not in an ExceptionGroup.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterator
from typing import IO, TypeVar

import trio

from r8imfs import _threads
from r8imfs.engine.tarindex import ForwardFile
from r8imfs.oci.digest import Hasher

T = TypeVar("T")

#: Chunks are batched to about this size before they cross to the worker thread.
PIECE = 1024 * 1024
#: Chunks under this size are joined with their neighbours: downstream, each
#: chunk costs the worker, the hash and the write threads a few GIL hand-offs,
#: and a body read from the socket as fast as it arrives comes in a fair share
#: of pieces of a few KiB.
SMALL = 256 * 1024
#: A chunk: bytes, or a view into a decoded unit (``fetchplan.UnitReader``).
Chunk = bytes | memoryview
#: The end of the stream, on the queue (the download stopped, for whatever reason).
_END: list[Chunk] = []


async def batches(
    source: AsyncIterable[Chunk], size: int = PIECE, small: int = SMALL
) -> AsyncGenerator[list[Chunk], None]:
    """Group chunks so each thread crossing carries about ``size`` bytes; runs of
    chunks under ``small`` bytes are joined into one (a cheap copy)."""
    parts: list[Chunk] = []
    run: list[Chunk] = []  # small chunks not yet joined
    pending = ran = 0
    async for chunk in source:
        if len(chunk) < small:
            run.append(chunk)
            ran += len(chunk)
            if ran < small:
                continue
            chunk, run, ran = _joined(run), [], 0
        elif run:
            parts.append(_joined(run))
            pending += ran
            run, ran = [], 0
        parts.append(chunk)
        pending += len(chunk)
        if pending >= size:
            yield parts
            parts, pending = [], 0
    if run:
        parts.append(_joined(run))
    if parts:
        yield parts


def _joined(parts: list[Chunk]) -> Chunk:
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _update_all(hasher: Hasher, parts: list[Chunk]) -> None:
    for part in parts:
        hasher.update(part)


class _Handoff:
    """Loop → worker: a queue of batches, taking more while it holds less than
    ``limit`` bytes.

    When the queue is full the loop waits on an event that the worker sets,
    through the loop (``run_sync_soon``), after its next ``get``: only then,
    so a worker keeping up costs the loop no wakeups.
    """

    def __init__(self, limit: int) -> None:
        self._queue: queue.SimpleQueue[tuple[list[Chunk], int]] = queue.SimpleQueue()
        self._limit = limit
        self._queued = 0  # bytes in the queue
        self._lock = threading.Lock()  # held for a few instructions, by either side
        self._room: trio.Event | None = None  # the loop waits for room
        self._token = trio.lowlevel.current_trio_token()

    async def put(self, batch: list[Chunk]) -> None:
        size = sum(map(len, batch))
        while True:
            with self._lock:
                if self._queued < self._limit:
                    self._queue.put((batch, size))
                    self._queued += size
                    return
                room = self._room = trio.Event()
            await room.wait()

    def end(self) -> None:
        self._queue.put((_END, 0))

    def chunks(self) -> Iterator[Chunk]:
        """Worker thread: the chunks, in order, until the end."""
        while True:
            batch, size = self._queue.get()
            if batch is _END:
                return
            with self._lock:
                self._queued -= size
                room, self._room = self._room, None
            if room is not None:
                self._token.run_sync_soon(room.set)
            yield from batch


async def consume_stream(
    source: AsyncIterable[Chunk],
    fn: Callable[[IO[bytes]], T],
    *,
    buffer: int = 8,
    hasher: Hasher | None = None,
) -> T:
    """``fn(fileobj)`` in a worker thread over the bytes of ``source``; its result.

    With ``hasher``, every byte is hashed on the way, in a ``run_io`` thread
    while ``fn`` works on the previous piece: a big hash off the consumer's
    critical path. It covers what was sent, so ``fn`` must read to the end
    for the digest to be the whole stream's.
    """
    handoff = _Handoff(buffer * PIECE)
    pump_error: BaseException | None = None
    consumer_error: BaseException | None = None
    result: T | None = None

    async def pump() -> None:
        nonlocal pump_error
        try:
            async with contextlib.aclosing(batches(source)) as pieces:
                async for batch in pieces:
                    if hasher is not None:
                        await _threads.run_io(_update_all, hasher, batch)
                    await handoff.put(batch)
        except Exception as exc:
            pump_error = exc
        finally:
            handoff.end()  # also when cancelled: the worker must not wait for ever

    def consume() -> T:
        return fn(ForwardFile(handoff.chunks()))  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump)
        try:
            result = await _threads.run_sync(consume)
        except Exception as exc:
            consumer_error = exc
        nursery.cancel_scope.cancel()  # the consumer is done: so is the download
    if pump_error is not None:
        raise pump_error
    if consumer_error is not None:
        raise consumer_error
    return result  # type: ignore[return-value]
