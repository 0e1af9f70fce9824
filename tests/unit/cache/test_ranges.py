"""The blob cache's pure bookkeeping: ranges, blocks, access streams, records."""

from __future__ import annotations

import pytest

from r8imfs.cache._ranges import Blocks, RangeSet, Record, SequentialDetector

# (ranges inserted in order, resulting intervals, bytes newly covered by the last insert)
ADD_CASES = [
    ([(0, 10)], [(0, 10)], 10),
    ([(0, 10), (20, 30)], [(0, 10), (20, 30)], 10),
    ([(20, 30), (0, 10)], [(0, 10), (20, 30)], 10),
    ([(0, 10), (10, 20)], [(0, 20)], 10),  # adjacent: merged
    ([(10, 20), (0, 10)], [(0, 20)], 10),
    ([(0, 10), (5, 15)], [(0, 15)], 5),  # overlapping
    ([(0, 10), (2, 8)], [(0, 10)], 0),  # inside
    ([(2, 8), (0, 10)], [(0, 10)], 4),  # around
    ([(0, 5), (10, 15), (20, 25), (3, 22)], [(0, 25)], 10),  # bridges three
    ([(0, 5), (10, 15), (20, 25), (5, 10)], [(0, 15), (20, 25)], 5),
    ([(0, 5), (5, 5)], [(0, 5)], 0),  # empty insert
    ([(10, 20), (30, 40), (21, 29)], [(10, 20), (21, 29), (30, 40)], 8),
]


@pytest.mark.parametrize(("inserts", "expected", "gained"), ADD_CASES)
def test_add_merges(
    inserts: list[tuple[int, int]], expected: list[tuple[int, int]], gained: int
) -> None:
    rs = RangeSet()
    last = 0
    for start, end in inserts:
        last = rs.add(start, end)
    assert list(rs) == expected
    assert last == gained
    assert rs.covered() == sum(e - s for s, e in expected)


# (present intervals, asked range, gaps)
MISSING_CASES = [
    ([], (0, 10), [(0, 10)]),
    ([(0, 10)], (0, 10), []),
    ([(0, 10)], (2, 5), []),
    ([(0, 10)], (5, 15), [(10, 15)]),
    ([(5, 10)], (0, 15), [(0, 5), (10, 15)]),
    ([(0, 2), (4, 6), (8, 10)], (0, 10), [(2, 4), (6, 8)]),
    ([(0, 2), (4, 6), (8, 10)], (1, 9), [(2, 4), (6, 8)]),
    ([(10, 20)], (0, 5), [(0, 5)]),
    ([(10, 20)], (25, 30), [(25, 30)]),
    ([(10, 20)], (20, 25), [(20, 25)]),  # half-open: 20 is not present
    ([(10, 20)], (5, 10), [(5, 10)]),
    ([(0, 10)], (3, 3), []),
]


@pytest.mark.parametrize(("present", "asked", "gaps"), MISSING_CASES)
def test_missing(
    present: list[tuple[int, int]], asked: tuple[int, int], gaps: list[tuple[int, int]]
) -> None:
    rs = RangeSet(present)
    assert rs.missing(*asked) == gaps
    assert rs.covers(*asked) == (not gaps)


@pytest.mark.parametrize(
    ("present", "pos", "end"),
    [
        ([], 0, 0),
        ([(0, 10)], 0, 10),
        ([(0, 10)], 9, 10),
        ([(0, 10)], 10, 10),
        ([(5, 9)], 2, 2),
        ([(0, 4), (6, 9)], 7, 9),
    ],
)
def test_contiguous_end(present: list[tuple[int, int]], pos: int, end: int) -> None:
    assert RangeSet(present).contiguous_end(pos) == end


def test_bad_range_refused() -> None:
    with pytest.raises(ValueError, match="bad range"):
        RangeSet().add(5, 3)


def test_copy_and_update_are_independent() -> None:
    a = RangeSet([(0, 4)])
    b = a.copy()
    b.add(10, 12)
    a.update(RangeSet([(4, 6)]))
    assert list(a) == [(0, 6)]
    assert list(b) == [(0, 4), (10, 12)]


@pytest.mark.parametrize(
    ("size", "block", "asked", "blocks"),
    [
        (100, 10, (0, 10), [0]),
        (100, 10, (0, 11), [0, 1]),
        (100, 10, (9, 21), [0, 1, 2]),
        (100, 10, (95, 200), [9]),
        (100, 10, (100, 110), []),
        (95, 10, (90, 95), [9]),
        (0, 10, (0, 10), []),
    ],
)
def test_blocks_covering(size: int, block: int, asked: tuple[int, int], blocks: list[int]) -> None:
    assert list(Blocks(size, block).covering(*asked)) == blocks


def test_blocks_spans_and_ahead() -> None:
    b = Blocks(95, 10)
    assert b.count == 10
    assert b.span(0) == (0, 10)
    assert b.span(9) == (90, 95)
    assert list(b.ahead(25, 3)) == [2, 3, 4, 5]
    assert list(b.ahead(85, 4)) == [8, 9]
    assert list(b.ahead(95, 4)) == []


def test_sequential_detector() -> None:
    d = SequentialDetector(slack=8, streams=2)
    assert not d.observe(0, 100)  # first read of a stream
    assert d.observe(100, 200)
    assert d.observe(204, 300)  # a small gap is still sequential
    assert not d.observe(5000, 5100)  # a jump: a second stream
    assert d.observe(300, 400)  # the first stream goes on
    assert d.observe(5100, 5200)  # and so does the second
    assert not d.observe(9000, 9100)  # a third evicts the least recent (first)
    assert not d.observe(400, 500)


def test_record_round_trip() -> None:
    record = Record("sha256:" + "a" * 64, 100, 42, ((0, 10), (20, 100)), verified=True)
    assert Record.decode(record.encode()) == record
    assert record.rangeset() == RangeSet([(0, 10), (20, 100)])


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"version": 2, "digest": "x", "size": 1, "ino": 1, "ranges": []}',
        b'{"version": 1, "digest": "x", "size": 10, "ino": 1, "ranges": [[0, 11]]}',
        b'{"version": 1, "digest": "x", "size": 10, "ino": 1, "ranges": [[5, 2]]}',
        b'{"version": 1, "digest": "x", "size": 10, "ino": 1}',
    ],
)
def test_damaged_records_are_ignored(raw: bytes) -> None:
    assert Record.decode(raw) is None
