"""Concurrency helpers of the operations: bounded fan-out, one error out of a nursery."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import trio

T = TypeVar("T")


@contextmanager
def collapse_groups() -> Iterator[None]:
    """Re-raise the one real error of a nursery instead of its ExceptionGroup.

    trio wraps every nursery failure in an ExceptionGroup, while the CLI
    reports ``R8imfsError``s by type. When the group (flattened) holds one
    exception besides ``Cancelled`` (the usual case: a sibling failed and the
    rest were cancelled), that one is raised, chained to the group.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        real = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
        if len(real) == 1:
            raise real[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def gather(jobs: Iterable[Callable[[], Awaitable[T]]], limit: int = 8) -> list[T]:
    """Run ``jobs`` with at most ``limit`` at once; results in the jobs' order."""
    todo = list(jobs)
    results: list[T | None] = [None] * len(todo)
    limiter = trio.CapacityLimiter(max(1, limit))

    async def one(i: int, job: Callable[[], Awaitable[T]]) -> None:
        async with limiter:
            results[i] = await job()

    with collapse_groups():
        async with trio.open_nursery() as nursery:
            for i, job in enumerate(todo):
                nursery.start_soon(one, i, job)
    return results  # type: ignore[return-value]
