"""``r8imfs._gc.paused``: no collections inside, the collector back as it was after."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from r8imfs import _gc


@pytest.fixture(autouse=True)
def _collector_on() -> Iterator[None]:
    gc.enable()
    yield
    gc.enable()


def test_no_collection_runs_inside() -> None:
    before = gc.get_stats()[0]["collections"]
    with _gc.paused():
        assert not gc.isenabled()
        junk = [[i] for i in range(50_000)]  # hundreds of young collections' worth
        assert gc.get_stats()[0]["collections"] == before
    assert gc.isenabled()
    del junk


def test_nested_pauses_end_with_the_outermost() -> None:
    with _gc.paused():
        with _gc.paused():
            pass
        assert not gc.isenabled()  # the inner one found it off: leaves it off
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with _gc.paused():
        pass
    assert not gc.isenabled()


def test_on_again_after_an_error() -> None:
    with pytest.raises(ValueError, match="boom"), _gc.paused():
        raise ValueError("boom")
    assert gc.isenabled()


def test_overlapping_pauses_end_with_the_last() -> None:
    """Threads pause side by side, and the first to begin need not end last."""
    first, second = _gc.paused(), _gc.paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()  # the second is still in its burst
    second.__exit__(None, None, None)
    assert gc.isenabled()
