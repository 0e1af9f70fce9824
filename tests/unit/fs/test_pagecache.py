"""Drop-behind bookkeeping (``fs.pagecache.DropBehind``), without a mount.

The real mount's behaviour (pages gone after a ``cp``, kept after a second
one, correct bytes throughout) is in tests/fuse/test_large.py.
"""

from __future__ import annotations

import os
import random
import struct

import pytest

from r8imfs.fs.pagecache import BATCH, LAG, MIN_RUN, DropBehind, KernelPages

MiB = 1024 * 1024
READ = 128 * 1024
Dropped = list[tuple[int, int, int]]


def stream(pages: DropBehind, fh: int, inode: int, start: int, end: int) -> None:
    for off in range(start, end, READ):
        pages.read(fh, inode, off, READ)


@pytest.fixture
def dropped() -> Dropped:
    return []


def test_a_sequential_reader_drops_behind_itself_in_batches(dropped: Dropped) -> None:
    pages = DropBehind(lambda *a: dropped.append(a))
    stream(pages, 1, 7, 0, 100 * MiB)
    assert dropped, "nothing was dropped behind a 100 MiB sequential read"
    assert all(inode == 7 for inode, _, _ in dropped)
    # contiguous from the start, in steps of at least BATCH, never within LAG of the end
    assert dropped[0][1] == 0
    for (_, off, length), (_, nxt, _) in zip(dropped, dropped[1:], strict=False):
        assert off + length == nxt
    assert all(length >= BATCH for _, _, length in dropped)
    last = dropped[-1][1] + dropped[-1][2]
    assert 100 * MiB - LAG - BATCH <= last <= 100 * MiB - LAG


def test_small_files_and_short_runs_keep_their_pages(dropped: Dropped) -> None:
    pages = DropBehind(lambda *a: dropped.append(a))
    stream(pages, 1, 7, 0, MIN_RUN - READ)
    assert dropped == []


def test_jumps_start_a_new_run(dropped: Dropped) -> None:
    pages = DropBehind(lambda *a: dropped.append(a))
    # random 128 KiB reads never make a run MIN_RUN long
    rng = random.Random(1)
    for _ in range(2000):
        pages.read(1, 7, rng.randrange(0, 400 * MiB, READ), READ)
    assert dropped == []
    # readahead that arrives a little out of order still continues the run
    for off in range(0, 64 * MiB, 2 * READ):
        pages.read(2, 8, off + READ, READ)
        pages.read(2, 8, off, READ)
    assert dropped


def test_a_file_read_again_is_kept(dropped: Dropped) -> None:
    pages = DropBehind(lambda *a: dropped.append(a))
    stream(pages, 1, 7, 0, 100 * MiB)
    pages.release(1)
    before = len(dropped)
    # a second reader from the start asks for a page that was dropped
    stream(pages, 2, 7, 0, 100 * MiB)
    assert len(dropped) == before
    assert 7 in pages.kept
    # another file still streams
    stream(pages, 3, 9, 0, 100 * MiB)
    assert {inode for inode, _, _ in dropped[before:]} == {9}


def test_readers_of_parts_of_a_file_side_by_side_each_drop_behind(dropped: Dropped) -> None:
    pages = DropBehind(lambda *a: dropped.append(a))
    # a segmented download: two handles, each streaming its half, interleaved
    for off in range(0, 100 * MiB, READ):
        pages.read(1, 7, off, READ)
        pages.read(2, 7, 500 * MiB + off, READ)
    assert 7 not in pages.kept
    assert {off < 500 * MiB for _, off, _ in dropped} == {True, False}


def test_pages_in_flight_are_never_the_reader_s_own(dropped: Dropped) -> None:
    pages = DropBehind(lambda *a: dropped.append(a))
    furthest = 0
    for off in range(0, 300 * MiB, READ):
        pages.read(1, 7, off, READ)
        furthest = off + READ
        if dropped:
            assert dropped[-1][1] + dropped[-1][2] <= furthest - LAG


def test_kernel_pages_writes_one_inval_inode_notification_per_drop() -> None:
    read_end, write_end = os.pipe()
    pages = KernelPages(write_end)
    try:
        pages.drop(42, 16 * MiB, 32 * MiB)
    finally:
        pages.close()  # pending drops are written first, then the fd is closed
    message = os.read(read_end, 4096)
    os.close(read_end)
    # struct fuse_out_header + struct fuse_notify_inval_inode_out
    assert struct.unpack("=IiQQqq", message) == (40, 2, 0, 42, 16 * MiB, 32 * MiB)
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(write_end)


def test_kernel_pages_stops_queueing_once_the_mount_is_gone() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # a write now fails (EPIPE), as one to an unmounted /dev/fuse does
    pages = KernelPages(write_end)
    pages.drop(42, 0, 16 * MiB)
    assert pages._thread is not None
    pages._thread.join(timeout=5)
    assert not pages._thread.is_alive()  # it ended on the error
    pages.drop(42, 16 * MiB, 16 * MiB)
    assert pages._queue.empty()  # nothing queued for a thread that is gone
    pages.close()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(write_end)
