"""The blob cache's files on disk, and the blocking work on them.

Everything here runs in ``run_io`` threads (``blobcache`` calls it): opening
a blob's sparse data file under a shared ``flock``, reading and writing its
range record and block table, hashing, and eviction. The layout and the
rules are described in ``blobcache``'s docstring.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from r8imfs._units import MiB
from r8imfs.cache._ranges import BlockHasher, BlockTable, RangeSet, Record
from r8imfs.engine.readat import pread_all
from r8imfs.oci import digest as _digest

#: Pieces at least this big have their block hashes made beside the blob's hash.
SIDE_MIN = 256 * 1024
#: One thread for the block hashes (started at the first big piece, in the
#: process that serves: the mount forks before).
_side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="r8imfs-blockhash")

STALE_TMP = 3600.0  # seconds after which an orphaned record temp file is removed


@dataclass(frozen=True, slots=True)
class Paths:
    data: Path
    record: Path
    blocks: Path

    @classmethod
    def of(cls, root: Path, digest: str) -> Paths:
        algorithm, _, hexpart = _digest.validate(digest).partition(":")
        base = root / "blobs" / algorithm / hexpart
        return cls(
            base.with_suffix(".data"), base.with_suffix(".ranges"), base.with_suffix(".blocks")
        )


def algorithm(digest: str) -> str:
    return digest.partition(":")[0]


# -- blocking helpers: these run in run_io threads --------------------------------


def open_data(root: Path, paths: Paths, size: int) -> tuple[int, int, Record | None]:
    """Open (creating) the data file under a shared flock; its fd, inode, record."""
    # private images' layers land here too; exist_ok: other layers open at once
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths.data.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        fd = os.open(paths.data, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        st = os.fstat(fd)
        try:
            same = os.stat(paths.data).st_ino == st.st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # evicted between our open and our lock: start again
    else:
        raise OSError(f"cannot open {paths.data}: it keeps being replaced")
    if st.st_size != size:
        os.ftruncate(fd, size)
    record = load(paths.record) if st.st_size == size else None
    return fd, st.st_ino, record


def load(path: Path) -> Record | None:
    try:
        return Record.decode(path.read_bytes())
    except FileNotFoundError:
        return None


def load_if_changed(path: Path, mtime: int) -> tuple[Record | None, int]:
    try:
        now = path.stat().st_mtime_ns
    except FileNotFoundError:
        return None, mtime
    if now == mtime:
        return None, mtime
    return load(path), now


def write_record(fd: int, paths: Paths, mine: Record) -> tuple[Record, int]:
    """Merge ``mine`` with the record on disk, write it atomically; (merged, mtime)."""
    os.fdatasync(fd)  # the bytes first, then the record that claims them
    ranges = RangeSet(mine.ranges)
    verified = mine.verified
    theirs = load(paths.record)
    if theirs is not None and (theirs.ino, theirs.size) == (mine.ino, mine.size):
        ranges.update(theirs.rangeset())
        verified = verified or theirs.verified
    merged = Record(mine.digest, mine.size, mine.ino, tuple(ranges), verified)
    try:
        if os.stat(paths.data).st_ino != mine.ino:
            return merged, 0  # our data file was deleted: its record must not return
    except FileNotFoundError:
        return merged, 0
    tmp = paths.record.with_name(f".{paths.record.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(merged.encode())
    os.replace(tmp, paths.record)
    return merged, paths.record.stat().st_mtime_ns


def touch(path: Path) -> int:
    """Mark a blob used now (for LRU); returns the record's mtime, 0 if none."""
    try:
        os.utime(path)
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


pread = pread_all


def pwrite(fd: int, data: bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def pwrite_hash(
    fd: int, data: bytearray, offset: int, hasher: _digest.Hasher, blocks: BlockHasher
) -> None:
    hash_bytes(data, hasher, blocks)
    pwrite(fd, data, offset)


def hash_file(
    fd: int, start: int, end: int, hasher: _digest.Hasher, blocks: BlockHasher | None
) -> None:
    """Hash ``[start, end)`` of the data file; both hashers are fed in blob order."""
    pos = start
    while pos < end:
        chunk = os.pread(fd, min(MiB, end - pos), pos)
        if not chunk:
            raise OSError(f"cache file ended at {pos}, expected {end} bytes")
        hash_bytes(chunk, hasher, blocks)
        pos += len(chunk)


def hash_bytes(
    data: bytes | bytearray | memoryview, hasher: _digest.Hasher, blocks: BlockHasher | None
) -> None:
    """``hash_file`` for bytes still in memory (no read back from the file).

    The block hashes are a second sha256 pass over the same bytes: for a piece
    of ``SIDE_MIN`` or more they run on a thread of their own (``_side``)
    while this one does the blob's hash, so both passes take the time of one
    when a core is free (hashlib lets go of the GIL for big buffers): the
    ``umount`` of a plain layer's mount after a ``cp`` of its 1 GiB, the hash
    frontier catching up from the data file, took 1.25 s instead of 1.66-1.74.
    """
    if blocks is None or len(data) < SIDE_MIN:
        hasher.update(cast(bytes, data))  # hashlib takes any buffer; spare a copy
        if blocks is not None:
            blocks.update(data)
        return
    side = _side.submit(blocks.update, data)
    try:
        hasher.update(cast(bytes, data))
    finally:
        side.result()


def file_matches(fd: int, size: int, digest: str, blocks: BlockHasher) -> bool:
    hasher = _digest.Hasher(algorithm(digest))
    hash_file(fd, 0, size, hasher, blocks)
    return hasher.digest == digest


def sha256_hex(data: bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def load_table(path: Path, digest: str, size: int, block_size: int) -> BlockTable | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    return BlockTable.decode(raw, digest, size, block_size)


def write_table(path: Path, table: BlockTable) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(table.encode())
    os.replace(tmp, path)


def delete(paths: Paths, ino: int) -> None:
    try:
        if os.stat(paths.data).st_ino != ino:
            return  # already replaced by someone else's fresh copy
    except FileNotFoundError:
        pass
    for path in (paths.record, paths.data):
        path.unlink(missing_ok=True)


def evict(root: Path, max_bytes: int, keep: frozenset[str]) -> int:
    """Delete least-recently-used blobs not in use until under ``max_bytes``.

    Decoded copies of layers (``decodedcopy``) count and go the same way.
    """
    blobs: list[tuple[float, int, Path]] = []
    usage = 0
    for data in [*root.glob("blobs/*/*.data"), *root.glob("decoded/*/*.tar")]:
        try:
            st = data.stat()
        except FileNotFoundError:
            continue
        record = data.with_suffix(".ranges")
        used = max(st.st_mtime, mtime(record))
        blobs.append((used, st.st_blocks * 512, data))
        usage += st.st_blocks * 512
    remove_stale_tmp(root)
    for _used, allocated, data in sorted(blobs):
        if usage <= max_bytes:
            break
        if data.name not in keep and remove_unused(data):
            usage -= allocated
    return usage


def mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def remove_unused(data: Path) -> bool:
    """Delete a blob's files if no process holds it open (its flock)."""
    try:
        fd = os.open(data, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        data.with_suffix(".ranges").unlink(missing_ok=True)
        data.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def remove_stale_tmp(root: Path) -> None:
    cutoff = time.time() - STALE_TMP
    for tmp in [*root.glob("blobs/*/.*.tmp"), *root.glob("decoded/*/.*.tmp")]:
        if mtime(tmp) < cutoff:
            tmp.unlink(missing_ok=True)
