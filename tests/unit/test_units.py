"""Byte sizes for people: printed and parsed with the same binary units."""

from __future__ import annotations

import pytest

from r8imfs._units import GiB, KiB, MiB, human_size, parse_size


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (KiB, "1.0 KiB"), (1536, "1.5 KiB"), (20 * GiB, "20.0 GiB")],
)
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text


@pytest.mark.parametrize("n", [KiB, 3 * MiB, 7 * GiB])
def test_printed_sizes_parse_back(n: int) -> None:
    assert parse_size(human_size(n).replace(" ", "")) == n
