"""Run sync stream consumers (tarfile, zlib, zstd) over an async byte stream.

``consume_stream(source, fn)`` feeds the chunks of an async iterator (a blob
download) to ``fn(fileobj)`` running in a worker thread, through a small
memory channel: the download and the decompression overlap, at most
``buffer`` chunks sit in memory, and the trio loop never decompresses.
Chunks are joined to about ``PIECE`` bytes first: every chunk costs the
worker a round trip through the trio loop, and HTTP bodies arrive in pieces
of 64 KiB or less (for a 1 GiB layer, 16,000 round trips cost about 3 s of
the worker's time; see docs/benchmarks.md).

Failure rules: a network error in the download wins over whatever the
consumer said about the truncated stream it then saw (the root cause is
reported); a consumer that stops early closes the channel, which stops the
download. Errors come out bare, not in an ExceptionGroup.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterator
from typing import IO, TypeVar

import trio

from r8imfs import _threads
from r8imfs.engine.tarindex import ForwardFile
from r8imfs.oci.digest import Hasher

T = TypeVar("T")

#: Chunks are joined to about this size before they cross to the worker thread.
PIECE = 1024 * 1024


async def coalesce(source: AsyncIterable[bytes], size: int = PIECE) -> AsyncGenerator[bytes, None]:
    """Join small chunks so each thread crossing carries about ``size`` bytes."""
    parts: list[bytes] = []
    pending = 0
    async for chunk in source:
        parts.append(chunk)
        pending += len(chunk)
        if pending >= size:
            yield b"".join(parts)
            parts, pending = [], 0
    if parts:
        yield b"".join(parts)


def _chunks(receive: trio.MemoryReceiveChannel[bytes]) -> Iterator[bytes]:
    while True:
        try:
            yield _threads.from_thread(receive.receive)
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return


async def consume_stream(
    source: AsyncIterable[bytes],
    fn: Callable[[IO[bytes]], T],
    *,
    buffer: int = 4,
    hasher: Hasher | None = None,
) -> T:
    """``fn(fileobj)`` in a worker thread over the bytes of ``source``; its result.

    With ``hasher``, every byte is hashed on the way, in a ``run_io`` thread
    while ``fn`` works on the previous piece: a big hash off the consumer's
    critical path. It covers what was sent, so ``fn`` must read to the end
    for the digest to be the whole stream's.
    """
    send, receive = trio.open_memory_channel[bytes](buffer)
    pump_error: BaseException | None = None
    consumer_error: BaseException | None = None
    result: T | None = None

    async def pump() -> None:
        nonlocal pump_error
        async with send:
            try:
                async with contextlib.aclosing(coalesce(source)) as pieces:
                    async for chunk in pieces:
                        if hasher is not None:
                            await _threads.run_io(hasher.update, chunk)
                        await send.send(chunk)
            except trio.BrokenResourceError:
                pass  # the consumer is done early
            except Exception as exc:
                pump_error = exc

    def consume() -> T:
        try:
            return fn(ForwardFile(_chunks(receive)))  # type: ignore[arg-type]
        finally:
            trio.from_thread.run_sync(receive.close)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump)
        try:
            result = await _threads.run_sync(consume)
        except Exception as exc:
            consumer_error = exc
    if pump_error is not None:
        raise pump_error
    if consumer_error is not None:
        raise consumer_error
    return result  # type: ignore[return-value]
