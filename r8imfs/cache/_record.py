"""A blob's record on disk (``<hex>.ranges``), shared with other processes.

The reader counts changes the record should learn of (``changed``); a flush
writes the present ranges merged with what other processes recorded meanwhile
and hands the merged record back, and ``reload`` takes another process's
record when its mtime moved. The record never claims bytes the data file does
not hold: ``_blobfiles.write_record`` syncs the data first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from r8imfs._threads import run_io
from r8imfs.cache import _blobfiles as _files
from r8imfs.cache._ranges import Record

FLUSH_INTERVAL = 2.0  # seconds between record writes while blocks arrive

#: ``write(paths, record)``: write the record merged with the one on disk, in
#: a thread holding the data file open; the merged record and its mtime.
WriteRecord = Callable[[_files.Paths, Record], Awaitable[tuple[Record, int]]]


class RecordFile:
    """When and how one reader writes and rereads its blob's record."""

    def __init__(self, paths: _files.Paths) -> None:
        self._paths = paths
        self._lock = trio.Lock()
        self._mtime = 0
        self._changes = 0  # bumped on every change the record should learn of
        self._recorded = 0  # the value of _changes the record on disk reflects
        self._last_flush = 0.0

    def changed(self) -> None:
        self._changes += 1

    @property
    def dirty(self) -> bool:
        return self._changes != self._recorded

    def due(self) -> bool:
        """Whether the last flush is ``FLUSH_INTERVAL`` old (spaces writes while blocks arrive)."""
        return trio.current_time() - self._last_flush >= FLUSH_INTERVAL

    async def touch(self) -> None:
        """Mark the blob used (eviction goes by mtime) and remember the mtime."""
        self._mtime = await run_io(_files.touch, self._paths.record)

    async def flush(self, mine: Callable[[], Record | None], write: WriteRecord) -> Record | None:
        """Write ``mine()`` if anything changed (else just touch); the merged record.

        ``mine`` is asked under the lock, so it describes the reader as it is
        when written; None (the blob failed) writes nothing.
        """
        async with self._lock:
            record = mine() if self.dirty else None
            if record is None:
                await run_io(_files.touch, self._paths.record)
                return None
            changes = self._changes
            merged, self._mtime = await write(self._paths, record)
            self._recorded = changes
            self._last_flush = trio.current_time()
            return merged

    async def reload(self) -> Record | None:
        """Another process's record, if it changed since we last looked."""
        record, self._mtime = await run_io(_files.load_if_changed, self._paths.record, self._mtime)
        return record
