"""``scratch``: a bytearray of the size asked, writable, not zero-filled by us."""

from __future__ import annotations

import pytest

from r8imfs._buffers import scratch


@pytest.mark.parametrize("n", [0, 1, 4096, 16 * 1024 * 1024 + 3])
def test_a_writable_bytearray_of_the_size_asked(n: int) -> None:
    buf = scratch(n)
    assert type(buf) is bytearray and len(buf) == n
    buf[:] = b"\x5a" * n
    assert buf == b"\x5a" * n
    del buf[n // 2 :]  # a real bytearray: it resizes
    assert len(buf) == n // 2


def test_a_negative_size_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        scratch(-1)
