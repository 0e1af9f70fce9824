"""``_threads.run_cpu``: decode work on one thread per core, never calling back."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from r8imfs import _threads


async def test_run_cpu_runs_off_the_loop_and_returns() -> None:
    loop_thread = threading.get_ident()
    got = await _threads.run_cpu(lambda x: (x * 2, threading.get_ident()), 21)
    assert got[0] == 42 and got[1] != loop_thread


async def test_run_cpu_is_a_leaf() -> None:
    async def nothing() -> None:
        pass

    with pytest.raises(RuntimeError, match="could deadlock"):
        await _threads.run_cpu(_threads.from_thread, nothing)


async def test_run_cpu_holds_at_most_one_thread_per_core() -> None:
    inside, peak, lock = 0, 0, threading.Lock()
    release = threading.Event()

    def work() -> None:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
        release.wait(10)
        with lock:
            inside -= 1

    async with trio.open_nursery() as nursery:
        for _ in range(_threads.CPU_THREADS + 3):
            nursery.start_soon(_threads.run_cpu, work)
        await trio.testing.wait_all_tasks_blocked()
        assert _threads.cpu_limiter().borrowed_tokens == _threads.CPU_THREADS
        release.set()
    assert peak <= _threads.CPU_THREADS
