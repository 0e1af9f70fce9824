"""Whether a cached blob's bytes are the blob: one ``Verifier`` per ``BlobReader``.

A hash frontier follows the present prefix of the blob (``advance``): it
hashes from the data file as the prefix grows, and when the last byte is in
compares the digest. The same pass hashes each block on its own; once the
digest checks out those block hashes become the blob's ``BlockTable``
(``learn_blocks``, kept beside the data file), and from then on every block
fetched from the network must match its hash before it is stored
(``check_block``). A mismatch anywhere makes the verifier ``failed``: the
reader then deletes the blob's files and refuses every read.

The verifier holds no file descriptor: hashing goes through a ``HashRange``
the reader gives it, which runs in a thread while the reader keeps its data
file open.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from r8imfs._threads import run_io
from r8imfs.cache import _blobfiles as _files
from r8imfs.cache._ranges import BlockHasher, BlockTable, RangeSet
from r8imfs.errors import DigestMismatch
from r8imfs.oci import digest as _digest

#: ``hash_range(start, end, hasher, blocks)``: feed the data file's bytes
#: ``[start, end)`` to ``hasher`` (and ``blocks`` unless None), in a thread.
HashRange = Callable[[int, int, _digest.Hasher, BlockHasher | None], Awaitable[None]]


class Verifier:
    """The running hash of one blob, its frontier, and its block table."""

    def __init__(self, digest: str, size: int, block_size: int, table_path: Path) -> None:
        self.digest = digest
        self.size = size
        self.block_size = block_size
        self.verified = False
        self.failed: DigestMismatch | None = None
        self._table_path = table_path
        self._hasher = _digest.Hasher(_files.algorithm(digest))
        self._block_hasher = BlockHasher(block_size)
        self._table: BlockTable | None = None  # known block hashes: fetches are checked
        self._frontier = 0
        self._lock = trio.Lock()

    async def load_table(self) -> None:
        """The block hashes kept from an earlier verified download, if any."""
        self._table = await run_io(
            _files.load_table, self._table_path, self.digest, self.size, self.block_size
        )

    @property
    def has_table(self) -> bool:
        """Whether block hashes are known (fetched blocks must match them)."""
        return self._table is not None

    def check_usable(self) -> None:
        """Raise the mismatch again (a copy: each raise gets its own traceback)."""
        if self.failed is not None:
            raise copy.copy(self.failed)

    async def check_block(
        self, block: int, span: tuple[int, int], data: bytearray, host: str
    ) -> None:
        """A fetched block of a blob verified before must hash as it did then."""
        if self._table is None:
            return
        got = await run_io(_files.sha256_hex, data)
        if got != self._table.expected(block):
            start, end = span
            raise DigestMismatch(
                f"blob {self.digest} is corrupt ({host} served bytes"
                f" {start}-{end - 1} unlike the copy verified before; refusing them)"
            )

    async def advance(self, present: RangeSet, hash_range: HashRange) -> str | None:
        """Hash the present prefix past the frontier; at the end, compare digests.

        Returns why the blob is wrong (the caller fails it), else None; sets
        ``verified`` (and learns the block table) when the digest matches.
        """
        async with self._lock:
            while not self.verified and self.failed is None:
                end = present.contiguous_end(self._frontier)
                if end == self._frontier:
                    break
                blocks = self._block_hasher if self._table is None else None
                await hash_range(self._frontier, end, self._hasher, blocks)
                self._frontier = end
            if self.verified or self.failed is not None or self._frontier < self.size:
                return None
            if self._hasher.digest != self.digest:
                return f"blob {self.digest} is corrupt (it hashes to {self._hasher.digest})"
            self.verified = True
            await self.learn_blocks(self._block_hasher)
            return None

    async def learn_blocks(self, blocks: BlockHasher) -> None:
        """Keep the block hashes of a blob that just verified (once per blob)."""
        if self._table is not None:
            return
        table = BlockTable(self.digest, self.size, self.block_size, blocks.hashes())
        self._table = table
        with trio.CancelScope(shield=True):
            await run_io(_files.write_table, self._table_path, table)

    def fail(self, message: str) -> DigestMismatch:
        """From now on the blob is refused with ``message``; the error to raise."""
        self.failed = DigestMismatch(message)
        self.verified = False
        return copy.copy(self.failed)
