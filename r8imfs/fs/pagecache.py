"""Drop-behind: a big file read once, start to end, does not stay in the page cache.

A ``cp`` of 20 GB of weights out of a mount leaves the kernel holding the
bytes twice: in the page cache of the copy, and in the page cache of the
mount's file, which nobody will read again. The second is pure cost. On a
busy machine it evicts pages somebody wanted; on a VM whose free memory goes
back to the host (virtio-balloon free page reporting, as on this project's
benchmark machines) every one of those pages is faulted in anew from the
host, and a ``cp`` of 1 GiB moved 2 GiB of fresh memory where the peer
pipeline moves 1 (docs/benchmarks.md, issue 12).

So, as ``dd iflag=nocache`` and ``rsync --drop-cache`` do from the reader's
side, the daemon drops the pages behind a sequential reader, from the
filesystem's side:

* per open file, a *run* of reads that each start where the last ended (or
  a little after: the kernel's async readahead);
* once a run is ``MIN_RUN`` long, what lies ``LAG`` behind its furthest read
  is dropped in steps of ``BATCH`` (``FUSE_NOTIFY_INVAL_INODE`` with a byte
  range). Files under ``MIN_RUN``, and reads that jump, keep their pages;
* a file read again, that is, a read of a page that was dropped (a second
  ``cp``, a second reader behind the first, an mmap that revisits), is kept
  from then on for the rest of the mount: one extra pass at most.

``mount --keep-cache`` turns it off. The writable mount does not use it.

The notification is written to the mount's ``/dev/fuse`` descriptor from a
thread of its own, never from the trio loop: invalidating a page waits for
its lock, and a page under a read is locked until the loop replies to it.
That wait is uninterruptible, so a SIGKILL landing while the thread waits on
such a page (a second reader re-reading, at that moment, what is being
dropped) leaves a process that cannot exit until the mount is aborted:
docs/reliability.md, "Known limits".
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import queue
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("r8imfs.fs")

MiB = 1024 * 1024
#: A run is dropped behind only once it is this long: small files stay cached.
MIN_RUN = 32 * MiB
#: How far behind a run's furthest read its pages are kept (the kernel's
#: readahead is 512 KiB, ``daemon.READ_AHEAD_KB``; the reader is behind that).
LAG = 8 * MiB
#: Pages are dropped in steps of this much (64 notifications per GiB).
BATCH = 16 * MiB
#: A read this far past a run's end still continues it (async readahead).
SLACK = 4 * MiB

_PAGE = mmap.PAGESIZE

#: ``enum fuse_notify_code`` (include/uapi/linux/fuse.h)
FUSE_NOTIFY_INVAL_INODE = 2
#: ``struct fuse_out_header`` (len, error = the notify code, unique = 0) and
#: ``struct fuse_notify_inval_inode_out`` (ino, off, len), in the host's order
_INVAL_INODE = struct.Struct("=IiQQqq")

Drop = Callable[[int, int, int], None]


@dataclass(slots=True)
class _Run:
    start: int
    end: int  # the furthest byte read + 1
    dropped: int  # [start, dropped) has been dropped


class DropBehind:
    """Which pages to drop, per open file; ``drop(inode, offset, length)`` drops them."""

    def __init__(self, drop: Drop) -> None:
        self._drop = drop
        self._runs: dict[int, _Run] = {}  # by file handle
        #: by inode: the ranges dropped, one per run (readers of parts of a file
        #: side by side each drop behind themselves)
        self._dropped: dict[int, list[list[int]]] = {}
        self.kept: set[int] = set()  # inodes read more than once

    def read(self, fh: int, inode: int, off: int, size: int) -> None:
        """Note a read the kernel asked for (``size`` bytes were replied)."""
        if inode in self.kept:
            return
        dropped = self._dropped.get(inode, ())
        if any(lo <= off < hi for lo, hi in dropped):
            # The kernel asks again for a page that was dropped: the file is
            # read more than once, so its pages are kept from now on.
            self.kept.add(inode)
            self._dropped.pop(inode)
            log.info("inode %d is read again: its pages stay cached", inode)
            return
        run = self._runs.get(fh)
        if run is None or not run.start <= off <= run.end + SLACK:
            start = -(-off // _PAGE) * _PAGE
            self._runs[fh] = _Run(start, off + size, start)
            return
        run.end = max(run.end, off + size)
        upto = (run.end - LAG) // _PAGE * _PAGE
        if run.end - run.start < MIN_RUN or upto - run.dropped < BATCH:
            return
        lo, run.dropped = run.dropped, upto
        ranges = self._dropped.setdefault(inode, [])
        joined = next((r for r in ranges if r[1] == lo), None)
        if joined is None:
            ranges.append([lo, upto])
        else:
            joined[1] = upto
        self._drop(inode, lo, upto - lo)

    def release(self, fh: int) -> None:
        self._runs.pop(fh, None)


class KernelPages:
    """Drops ranges of a FUSE mount's page cache, from a thread of its own.

    Not ``engine.writer.BackgroundWriter``: its bounded queue blocks the
    caller when full, and the caller here is the trio loop, which must go on
    answering reads for a drop in flight to finish.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd  # our own descriptor (a dup), closed by ``close``
        self._queue: queue.SimpleQueue[tuple[int, int, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._gone = False  # the thread ended on an error (unmounted): drops are moot

    @classmethod
    def of_this_process(cls) -> KernelPages | None:
        """For the one ``/dev/fuse`` this process has open; None if not exactly one."""
        found = []
        with contextlib.suppress(OSError):
            for name in os.listdir("/proc/self/fd"):
                with contextlib.suppress(OSError, ValueError):
                    if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                        found.append(int(name))
        if len(found) != 1:
            log.info("page cache kept: %d /dev/fuse descriptors open, not one", len(found))
            return None
        return cls(os.dup(found[0]))

    def drop(self, inode: int, off: int, length: int) -> None:
        if self._closed or self._gone:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="r8imfs-pages", daemon=True)
            self._thread.start()
        self._queue.put((inode, off, length))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            inode, off, length = item
            message = _INVAL_INODE.pack(
                _INVAL_INODE.size, FUSE_NOTIFY_INVAL_INODE, 0, inode, off, length
            )
            try:
                os.write(self._fd, message)
            except OSError as exc:
                if exc.errno == errno.ENOENT:  # the kernel has forgotten the inode
                    continue
                log.info("page cache kept from now on: %s", exc)  # unmounted (ENODEV)
                self._gone = True
                return

    def close(self) -> None:
        """Stop (pending drops are done first) and close the descriptor."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            if self._thread.is_alive():  # stuck on a page lock: leave the fd to exit
                return
        os.close(self._fd)
