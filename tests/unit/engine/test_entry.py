"""``normalise_path``: tar and TOC names to the index's form, fast path and slow alike."""

from __future__ import annotations

import pytest

from r8imfs.engine.entry import normalise_path
from r8imfs.errors import UnsafeLayer


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("a", "a"),
        ("a/b/c.txt", "a/b/c.txt"),  # already normal: returned as it is
        ("./a/b", "a/b"),
        ("/a/b/", "a/b"),
        ("a//b", "a/b"),
        ("a/./b", "a/b"),
        ("a/b/.", "a/b"),
        (".", ""),
        ("/", ""),
        ("", ""),
        ("./", ""),
        ("a/.b/..c", "a/.b/..c"),  # dots inside names are names
        ("...", "..."),
    ],
)
def test_normal_form(name: str, want: str) -> None:
    assert normalise_path(name) == want


@pytest.mark.parametrize("name", ["..", "../a", "a/../b", "a/..", "./..", "/a/b/../../.."])
def test_climbing_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafeLayer):
        normalise_path(name)
