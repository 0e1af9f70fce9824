"""The one bridge between the trio loop and worker threads.

The rule: blocking work never runs on the trio loop. Decompression, hashing
of big buffers, SQLite, and file I/O of more than a few KiB go to a worker
thread through this module; every FUSE request and every network transfer
shares the one loop, so a 50 ms ``zlib`` call there stalls all of them.

Two kinds of thread work, two limiters, because of one deadlock:

``run_sync(fn, *args)``
    General work, including the sync layer engine (tarfile, indexed_gzip,
    zstd), which may call back into async code with ``from_thread`` (the
    engine reads compressed bytes through the async blob cache). At most
    ``max(4, 2 * cpu)`` such threads run at once.
``run_io(fn, *args)``
    Leaf work that never calls back into trio: ``os.pread``/``os.pwrite`` of
    the blob cache, hashing a file, one SQLite statement. It has a limiter of
    its own.
``run_cpu(fn, *args)``
    Leaf CPU work that releases the GIL (decoding a zstd frame or a gzip
    span from bytes in memory): as many threads as there are cores, so
    independent units decode in parallel without oversubscribing the
    machine. Also a leaf: it never calls back into trio.

Why two: if engine threads held every ``run_sync`` token while each waited
in ``from_thread`` for a blob read, and that read needed a ``run_sync`` token
for its ``pread``, nothing could ever move. Leaf work on its own limiter
always finishes, so a callback from an engine thread always completes. Both
misuses that could deadlock raise ``RuntimeError`` instead:
``run_sync`` from inside a ``from_thread`` callback, and ``from_thread`` from
a ``run_io`` thread.

Threads are never abandoned on cancel (``abandon_on_cancel=False``): a
cancelled caller waits for its thread, so no thread outlives the buffer or
file descriptor it was given. Limiters are per ``trio.run`` (a ``RunVar``,
as trio does for its own default limiter), since a trio object parked on in
one run must not be touched by the next.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar, TypeVarTuple, Unpack

import trio
from trio.lowlevel import RunVar

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: Threads for ``run_sync`` (the engine may hold one for a whole layer).
THREADS = max(4, 2 * (os.cpu_count() or 1))
#: Threads for ``run_io``: short leaf operations.
IO_THREADS = max(8, 2 * (os.cpu_count() or 1))
#: Threads for ``run_cpu``: one per core (decoders release the GIL).
CPU_THREADS = max(1, os.cpu_count() or 1)

_limiter: RunVar[trio.CapacityLimiter] = RunVar("r8imfs_limiter")
_io_limiter: RunVar[trio.CapacityLimiter] = RunVar("r8imfs_io_limiter")
_cpu_limiter: RunVar[trio.CapacityLimiter] = RunVar("r8imfs_cpu_limiter")
# True in a run_sync thread and in the trio tasks its from_thread calls start
# (trio copies the context both ways).
_in_worker: contextvars.ContextVar[bool] = contextvars.ContextVar("r8imfs_in_worker", default=False)
_local = threading.local()


def limiter() -> trio.CapacityLimiter:
    """This run's limiter for ``run_sync``."""
    return _get(_limiter, THREADS)


def io_limiter() -> trio.CapacityLimiter:
    """This run's limiter for ``run_io``."""
    return _get(_io_limiter, IO_THREADS)


def cpu_limiter() -> trio.CapacityLimiter:
    """This run's limiter for ``run_cpu``."""
    return _get(_cpu_limiter, CPU_THREADS)


def _get(var: RunVar[trio.CapacityLimiter], size: int) -> trio.CapacityLimiter:
    try:
        return var.get()
    except LookupError:
        created = trio.CapacityLimiter(size)
        var.set(created)
        return created


async def run_sync(fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
    """Run blocking ``fn(*args)`` in a worker thread; it may use ``from_thread``."""
    if _in_worker.get():
        raise RuntimeError(
            "run_sync inside a from_thread callback could deadlock; use run_io for leaf work"
        )

    def worker() -> T:
        _in_worker.set(True)
        return fn(*args)

    return await trio.to_thread.run_sync(worker, limiter=limiter(), abandon_on_cancel=False)


async def run_io(fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
    """Run short blocking ``fn(*args)`` (file I/O, hashing) that never calls back."""
    return await _run_leaf(io_limiter(), fn, *args)


async def run_cpu(fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
    """Run GIL-releasing CPU work ``fn(*args)`` (a decode) on one of ``CPU_THREADS``."""
    return await _run_leaf(cpu_limiter(), fn, *args)


async def _run_leaf(limiter: trio.CapacityLimiter, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
    def leaf() -> T:
        _local.leaf = True
        try:
            return fn(*args)
        finally:
            _local.leaf = False

    return await trio.to_thread.run_sync(leaf, limiter=limiter, abandon_on_cancel=False)


def from_thread(afn: Callable[[Unpack[Ts]], Awaitable[T]], *args: *Ts) -> T:
    """From a ``run_sync`` thread: run ``await afn(*args)`` on the trio loop."""
    if getattr(_local, "leaf", False):
        raise RuntimeError("from_thread in a run_io thread could deadlock; use run_sync")
    return trio.from_thread.run(afn, *args)
