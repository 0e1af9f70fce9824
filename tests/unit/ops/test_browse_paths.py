"""Path lookups inside an image (symlinks followed as a chroot would) and IMAGE:PATH."""

from __future__ import annotations

import pytest

from r8imfs.cli.cp import split_source
from r8imfs.engine.entry import Entry, Kind
from r8imfs.engine.merged import MergedTree
from r8imfs.errors import PathNotFound, UsageError
from r8imfs.ops.browse import listing, preorder, resolve


def _tree() -> MergedTree:
    entries = [
        Entry("usr", Kind.DIR),
        Entry("usr/lib", Kind.DIR),
        Entry("usr/lib/libx.so", Kind.FILE, size=3),
        Entry("lib", Kind.SYMLINK, linkname="usr/lib"),
        Entry("abs", Kind.SYMLINK, linkname="/usr/lib/libx.so"),
        Entry("up", Kind.SYMLINK, linkname="../../../usr"),
        Entry("loop1", Kind.SYMLINK, linkname="loop2"),
        Entry("loop2", Kind.SYMLINK, linkname="loop1"),
        Entry("dangling", Kind.SYMLINK, linkname="nowhere"),
        Entry("etc", Kind.DIR),
        Entry("etc/hostname", Kind.FILE, size=5),
    ]
    return MergedTree.build(
        [
            [
                Entry(e.path, e.kind, size=e.size, linkname=e.linkname, ordinal=i)
                for i, e in enumerate(entries)
            ]
        ]
    )


@pytest.mark.parametrize(
    ("path", "follow", "expected"),
    [
        ("/lib/libx.so", False, "usr/lib/libx.so"),  # through a relative symlink
        ("lib", False, "lib"),  # the last component kept as itself
        ("lib", True, "usr/lib"),
        ("/abs", True, "usr/lib/libx.so"),  # absolute: from the image's root
        ("/up/lib", False, "usr/lib"),  # '..' stops at the image's root
        ("/etc/../usr/./lib/", False, "usr/lib"),
        ("/", False, ""),
    ],
)
def test_resolve_follows_symlinks_inside_the_image(path: str, follow: bool, expected: str) -> None:
    assert resolve(_tree(), path, follow=follow).path == expected


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/nope", "no such file or directory in the image: /nope"),
        ("/etc/hostname/x", "no such file or directory in the image: /etc/hostname/x"),
        ("/dangling/x", "no such file or directory"),
        ("/loop1/x", "too many levels of symbolic links"),
    ],
)
def test_resolve_failures_are_path_not_found(path: str, message: str) -> None:
    with pytest.raises(PathNotFound, match=message):
        resolve(_tree(), path, follow=True)


def test_listing_and_preorder() -> None:
    tree = _tree()
    assert [r.name for r in listing(tree, "/lib", recursive=False, long=False).rows] == ["libx.so"]
    long = listing(tree, "/lib", recursive=False, long=True)
    assert [r.path for r in long.rows] == ["lib"] and long.top == ""
    assert [n.path for n in preorder(tree, tree.node(""))][:4] == [
        "abs",
        "dangling",
        "etc",
        "etc/hostname",
    ]


@pytest.mark.parametrize(
    ("text", "image", "path"),
    [
        ("r8.im/u/m:/src/weights", "r8.im/u/m", "/src/weights"),
        ("r8.im/u/m:v2:/src", "r8.im/u/m:v2", "/src"),
        ("localhost:5000/a/b:v1:/etc/os-release", "localhost:5000/a/b:v1", "/etc/os-release"),
        ("r8.im/u/m@sha256:" + "a" * 64 + ":/x", "r8.im/u/m@sha256:" + "a" * 64, "/x"),
        ("r8.im/u/m:src/weights", "r8.im/u/m", "src/weights"),
    ],
)
def test_split_source(text: str, image: str, path: str) -> None:
    assert split_source(text) == (image, path)


@pytest.mark.parametrize(
    "text", ["r8.im/u/m", "localhost:5000/a", ":/x", "127.0.0.1:5000/a/b:v1", "r8.im/u/m:file"]
)
def test_split_source_refuses_what_has_no_path(text: str) -> None:
    with pytest.raises(UsageError):
        split_source(text)
