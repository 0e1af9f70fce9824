"""The header walk of an uncompressed layer (``engine.codecs.plain.HeaderWalk``):
small exact reads where the walk hops over big bodies, growing reads through
``read_at`` where headers are dense."""

from __future__ import annotations

import random
import threading

from r8imfs.engine.codecs.plain import (
    BLOCK_READ,
    HOP_READ,
    MAX_READ,
    ExactReadAt,
    HeaderWalk,
    PlainLayerReader,
    build_plain_index,
)
from r8imfs.engine.entry import Kind
from r8imfs.engine.readat import BytesReadAt, read_entry
from r8imfs.engine.tarindex import index_seekable
from tests.helpers.tars import M, MiB, make_tar


class Recording:
    """A ``ReadAt`` over bytes that records its reads: ("exact" | "block", offset, size)."""

    def __init__(self, data: bytes) -> None:
        self._inner = BytesReadAt(data)
        self._lock = threading.Lock()
        self.calls: list[tuple[str, int, int]] = []

    @property
    def size(self) -> int:
        return self._inner.size

    def read_at(self, offset: int, size: int) -> bytes:
        with self._lock:
            self.calls.append(("block", offset, size))
        return self._inner.read_at(offset, size)

    def fetch_at(self, offset: int, size: int) -> bytes:
        with self._lock:
            self.calls.append(("exact", offset, size))
        return self._inner.read_at(offset, size)

    def moved(self, kind: str | None = None) -> int:
        return sum(n for k, _, n in self.calls if kind in (None, k))


def _small_files(n: int, seed: int, prefix: str = "small") -> list[M]:
    rng = random.Random(seed)
    return [M("f", f"{prefix}/f{i}", rng.randbytes(rng.randint(10, 3000))) for i in range(n)]


def test_a_recording_readat_is_an_exact_readat() -> None:
    assert isinstance(Recording(b""), ExactReadAt)
    assert not isinstance(BytesReadAt(b""), ExactReadAt)


def test_hops_over_big_bodies_with_small_exact_reads() -> None:
    members = [M("d", "w"), *[M("f", f"w/{i}.bin", bytes([i]) * (3 * MiB)) for i in range(8)]]
    data = make_tar(members)
    rec = Recording(data)
    entries = build_plain_index(rec)
    assert [e.path for e in entries] == ["w", *[f"w/{i}.bin" for i in range(8)]]
    # one small exact GET per header (the first two headers share one), none through blocks
    assert {k for k, _, _ in rec.calls} == {"exact"}
    assert all(n <= HOP_READ for _, _, n in rec.calls)
    assert len(rec.calls) == 9  # the first read, one per body skipped
    reader = PlainLayerReader(BytesReadAt(data))
    assert read_entry(reader, entries[3], 3 * MiB - 2, 10) == b"\x02\x02"


def test_dense_headers_grow_the_reads_then_go_through_blocks() -> None:
    data = make_tar(_small_files(4000, seed=1))  # about 8 MiB of small files
    rec = Recording(data)
    entries = build_plain_index(rec)
    assert len(entries) == 4000
    assert entries == index_seekable(HeaderWalk(BytesReadAt(data)), len(data))
    exact = [n for k, _, n in rec.calls if k == "exact"]
    blocks = [n for k, _, n in rec.calls if k == "block"]
    # HOP_READ, doubling, up to BLOCK_READ: then blocks, up to MAX_READ a read
    assert exact == [HOP_READ * 2**i for i in range(len(exact))]
    assert exact[-1] * 2 == BLOCK_READ
    assert blocks[0] == BLOCK_READ and max(blocks) == MAX_READ
    # a handful of reads for 4000 headers, and little read twice
    assert len(rec.calls) <= 12
    assert rec.moved() <= len(data) + BLOCK_READ


def test_middling_files_are_read_through_not_hopped_one_get_each() -> None:
    # 300 KB bodies: skipping each costs a round trip per header, reading them
    # through a block carries a dozen headers per GET
    data = make_tar([M("f", f"m/{i}", bytes([i]) * 300_000) for i in range(120)])
    rec = Recording(data)
    assert len(build_plain_index(rec)) == 120
    assert len(rec.calls) <= 20
    assert rec.calls[-1][0] == "block"


def test_a_long_hop_starts_small_again() -> None:
    members = [
        *_small_files(1500, seed=2, prefix="a"),  # dense: grows into block reads
        M("f", "big.bin", b"\x07" * (40 * MiB)),
        *_small_files(3, seed=3, prefix="b"),
    ]
    data = make_tar(members)
    rec = Recording(data)
    entries = build_plain_index(rec)
    assert [e.path for e in entries[-4:]] == ["big.bin", "b/f0", "b/f1", "b/f2"]
    assert entries[-4].kind is Kind.FILE and entries[-4].size == 40 * MiB
    kind, offset, size = rec.calls[-1]
    assert kind == "exact" and size <= HOP_READ  # after the body: small again
    # (tarfile reads the byte before each header: is the archive cut short?)
    assert offset == entries[-4].data_offset + 40 * MiB - 1
    assert rec.moved() < len(data) // 5  # the body was never read


def test_without_fetch_at_every_read_goes_through_read_at() -> None:
    data = make_tar(_small_files(50, seed=4))
    base = BytesReadAt(data)
    seen: list[int] = []

    class Plain:
        size = base.size

        def read_at(self, offset: int, size: int) -> bytes:
            seen.append(size)
            return base.read_at(offset, size)

    assert len(build_plain_index(Plain())) == 50
    assert seen and seen[0] == HOP_READ


def test_progress_is_monotonic_and_reaches_the_end_of_the_walk() -> None:
    data = make_tar([*_small_files(300, seed=5), M("f", "z.bin", b"z" * (5 * MiB))])
    got: list[tuple[int, int]] = []
    build_plain_index(Recording(data), progress=lambda done, total: got.append((done, total)))
    dones = [d for d, _ in got]
    assert dones == sorted(dones) and {t for _, t in got} == {len(data)}
    assert dones[-1] == len(data)  # the end-of-archive blocks are the last read


def test_long_pax_headers_across_read_edges() -> None:
    long = "x" * 3000  # PAX records: a header, its data blocks, then the real header
    members = [M("f", f"{long}/{i}", b"y" * (200 * 1024 + i)) for i in range(6)]
    data = make_tar(members)
    entries = build_plain_index(Recording(data))
    assert [e.path for e in entries] == [f"{long}/{i}" for i in range(6)]
    reader = PlainLayerReader(BytesReadAt(data))
    assert read_entry(reader, entries[5], 0, 4) == b"yyyy"
