"""``fs.writable.PathInodes``: inode numbers of a writable rootfs follow renames."""

from __future__ import annotations

from r8imfs.fs.writable import RW_ROOT, PathInodes


def test_numbers_are_stable_and_follow_a_renamed_subtree() -> None:
    inodes = PathInodes()
    assert inodes.ino("") == RW_ROOT
    a, ab, abc, other = (inodes.ino(p) for p in ("a", "a/b", "a/b/c", "ab"))
    assert len({RW_ROOT, a, ab, abc, other}) == 5
    assert inodes.ino("a/b") == ab
    inodes.moved("a", "z")
    assert (inodes.path(a), inodes.path(ab), inodes.path(abc)) == ("z", "z/b", "z/b/c")
    assert inodes.path(other) == "ab"  # a sibling sharing the prefix does not move
    assert inodes.ino("a") not in (a, ab, abc)  # the old name is a new file now


def test_a_rename_over_a_name_and_a_removal_drop_their_numbers() -> None:
    inodes = PathInodes()
    src, dst, below = inodes.ino("s"), inodes.ino("d"), inodes.ino("d/x")
    inodes.moved("s", "d")
    assert inodes.path(src) == "d"
    assert inodes.path(dst) is None and inodes.path(below) is None
    inodes.dropped("d")
    assert inodes.path(src) is None
