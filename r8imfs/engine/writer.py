"""Big sequential outputs (writes, a hash) fed to a thread of their own (sync, no trio)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sized
from typing import Generic, TypeVar

#: what a writer is given: the caller must not change it once written
Chunk = bytes | bytearray | memoryview
T = TypeVar("T", bound=Sized)


class BackgroundWriter(Generic[T]):
    """``write`` calls made in order on a thread of their own.

    Filling fresh page-cache pages costs real system time (1-2 s per GiB on
    the benchmark VM), about what inflating them costs in user time: a
    consumer that inflates and writes big outputs runs nearly twice as fast
    when the writes happen here (``write`` releases the GIL). The queue is
    bounded; the first error is raised by the next ``write`` or by ``close``,
    which waits for everything queued.
    """

    def __init__(
        self, write: Callable[[T], object], *, depth: int = 8, name: str = "r8imfs-write"
    ) -> None:
        self._write = write
        self._queue: queue.Queue[T | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining, so that a put never blocks for ever
            try:
                self._write(data)
            except BaseException as exc:
                self._error = exc

    def write(self, data: T) -> int:
        if self._error is not None:
            raise self._error
        self._queue.put(data)
        return len(data)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error
