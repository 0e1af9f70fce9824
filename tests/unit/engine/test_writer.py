"""BackgroundWriter: order kept, errors surface, a failed writer never blocks the producer."""

from __future__ import annotations

import pytest

from r8imfs.engine.writer import BackgroundWriter


def test_writes_arrive_in_order_and_close_waits_for_them() -> None:
    got: list[bytes] = []
    writer = BackgroundWriter(got.append, depth=2)
    pieces = [bytes([i]) * (i + 1) for i in range(100)]
    for piece in pieces:
        assert writer.write(piece) == len(piece)
    writer.close()
    assert got == pieces


def test_the_first_error_is_raised_by_a_later_write_or_by_close() -> None:
    calls = 0

    def failing(data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(28, "No space left on device")

    writer = BackgroundWriter(failing, depth=1)

    def write_many() -> None:
        for _ in range(1000):  # more than the queue holds: must not block for ever
            writer.write(b"x")

    with pytest.raises(OSError, match="No space"):
        write_many()
    with pytest.raises(OSError, match="No space"):
        writer.close()
    assert calls == 3  # nothing written after the failure


def test_close_twice_is_harmless() -> None:
    got: list[bytes] = []
    writer = BackgroundWriter(got.append)
    writer.write(b"a")
    writer.close()
    writer.close()
    assert got == [b"a"]
