from __future__ import annotations

import io
import os
import posixpath
import random
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from r8imfs.engine.entry import Entry, Kind
from r8imfs.engine.merged import LayerTree, MergedTree
from r8imfs.engine.readat import BlobFile, BytesReadAt
from r8imfs.engine.tarindex import index_seekable
from tests.helpers.tars import M, make_tar


def _entries(members: list[M]) -> list[Entry]:
    data = make_tar(members)
    return index_seekable(BlobFile(BytesReadAt(data)), len(data))


def _tree(*layers: list[M]) -> MergedTree:
    return MergedTree.build([_entries(layer) for layer in layers])


def _paths(tree: MergedTree | LayerTree) -> list[str]:
    return [n.path for n in tree]


# --- whiteouts and replacement, case by case ------------------------------------


def test_whiteout_removes_file_and_never_shows() -> None:
    tree = _tree(
        [M("f", "a/keep", b"1"), M("f", "a/gone", b"2")],
        [M("f", "a/.wh.gone")],
    )
    assert tree.listdir("a") == ("keep",)
    assert tree.lookup("a/.wh.gone") is None
    assert tree.lookup("a/gone") is None


def test_whiteout_of_a_directory_removes_its_subtree() -> None:
    tree = _tree(
        [M("d", "a"), M("f", "a/b/c/d", b"x"), M("f", "a/b/e", b"y"), M("f", "a/z", b"")],
        [M("f", "a/.wh.b")],
    )
    assert _paths(tree) == ["", "a", "a/z"]


def test_whiteout_does_not_hide_its_own_layer() -> None:
    tree = _tree([M("f", "x", b"old")], [M("f", "x", b"new!"), M("f", ".wh.x")])
    assert tree.node("x").entry.size == 4
    assert tree.node("x").layer == 1


def test_whiteout_of_missing_path_is_harmless() -> None:
    tree = _tree([M("f", "a", b"")], [M("f", "nowhere/.wh.thing"), M("f", ".wh.nothing")])
    assert _paths(tree) == ["", "a"]


@pytest.mark.parametrize("marker_first", [True, False])
def test_opaque_directory(marker_first: bool) -> None:
    opaque = [M("f", "d/.wh..wh..opq"), M("d", "d", mode=0o700), M("f", "d/new", b"n")]
    if not marker_first:
        opaque = opaque[1:] + opaque[:1]
    tree = _tree(
        [M("d", "d"), M("f", "d/old", b"o"), M("d", "d/sub"), M("f", "d/sub/x", b""), M("f", "e")],
        opaque,
    )
    assert tree.listdir("d") == ("new",)
    assert tree.node("d").entry.mode == 0o700
    assert tree.node("d").layer == 1
    assert tree.lookup("d/sub/x") is None
    assert tree.lookup("e") is not None


def test_opaque_marker_without_dir_entry_keeps_the_dir() -> None:
    tree = _tree([M("d", "d", mode=0o711), M("f", "d/old", b"")], [M("f", "d/.wh..wh..opq")])
    assert tree.listdir("d") == ()
    assert tree.node("d").entry.mode == 0o711


def test_aufs_metadata_is_hidden() -> None:
    tree = _tree([M("d", ".wh..wh.plnk"), M("f", ".wh..wh.plnk/123.456", b""), M("f", "a")])
    assert tree.listdir("") == ("a",)


def test_dir_over_dir_merges_and_upper_metadata_wins() -> None:
    tree = _tree(
        [M("d", "d", mode=0o755, uid=1), M("f", "d/a", b"")],
        [M("d", "d", mode=0o700, uid=2), M("f", "d/b", b"")],
    )
    node = tree.node("d")
    assert (node.entry.mode, node.entry.uid, node.layer) == (0o700, 2, 1)
    assert tree.listdir("d") == ("a", "b")


def test_file_replaces_dir_and_dir_replaces_file() -> None:
    tree = _tree(
        [M("d", "x"), M("f", "x/inner", b""), M("f", "y", b"file")],
        [M("f", "x", b"now a file"), M("d", "y")],
    )
    assert tree.node("x").kind is Kind.FILE
    assert tree.lookup("x/inner") is None
    assert tree.node("y").is_dir
    assert tree.listdir("y") == ()


def test_symlink_replaces_dir() -> None:
    tree = _tree([M("f", "lib/x", b"")], [M("l", "lib", link="usr/lib")])
    assert tree.node("lib").kind is Kind.SYMLINK
    assert tree.lookup("lib/x") is None


def test_implicit_parents() -> None:
    tree = _tree([M("f", "a", b"file in the way")], [M("f", "a/b/c", b"deep")])
    a, b = tree.node("a"), tree.node("a/b")
    assert a.is_dir
    assert a.implicit
    assert a.entry.mode == 0o755
    assert a.layer == 1
    assert b.implicit
    assert tree.node("a/b/c").entry.size == 4


def test_root_entry_sets_root_metadata() -> None:
    tree = _tree([M("f", "a", b"")], [M("d", "./", mode=0o700)])
    root = tree.node("/")
    assert root.path == ""
    assert root.entry.mode == 0o700
    assert not root.implicit


def test_hardlinks_share_data_and_count_links() -> None:
    tree = _tree(
        [M("f", "bin/busybox", b"ELF" * 10), M("h", "bin/sh", link="bin/busybox")],
        [M("h", "bin/ls", link="bin/busybox"), M("h", "bin/chain", link="bin/ls")],
    )
    nodes = [tree.node(p) for p in ("bin/busybox", "bin/sh", "bin/ls", "bin/chain")]
    assert {n.data_key for n in nodes} == {(0, 0)}
    assert all(n.kind is Kind.FILE and n.entry.size == 30 and n.nlink == 4 for n in nodes)
    tree2 = _tree(
        [M("f", "bin/busybox", b"ELF"), M("h", "bin/sh", link="bin/busybox")],
        [M("f", "bin/.wh.sh")],
    )
    assert tree2.node("bin/busybox").nlink == 1


def test_hardlink_to_a_lower_layer_file() -> None:
    tree = _tree([M("f", "lib/libc.so", b"libc")], [M("h", "lib/libc.so.6", link="lib/libc.so")])
    low, high = tree.node("lib/libc.so"), tree.node("lib/libc.so.6")
    assert high.data_key == low.data_key == (0, 0)
    assert high.nlink == low.nlink == 2


def test_dangling_hardlink_is_dropped() -> None:
    tree = _tree([M("h", "x", link="missing"), M("d", "d"), M("h", "y", link="d")])
    assert _paths(tree) == ["", "d"]


def test_directory_nlink_counts_subdirs() -> None:
    tree = _tree([M("d", "a/b"), M("d", "a/c"), M("f", "a/f", b"")])
    assert tree.node("a").nlink == 4
    assert tree.node("").nlink == 3


def test_lookup_api() -> None:
    tree = _tree([M("f", "usr/bin/env", b""), M("f", "usr/bin/awk", b"")])
    assert tree.listdir("/usr/bin/") == ("awk", "env")
    assert tree.lookup("./usr//bin/env") is not None
    assert "usr/bin" in tree
    assert tree.lookup("usr/../etc") is None
    assert "nope" not in tree
    with pytest.raises(FileNotFoundError):
        tree.node("nope")
    with pytest.raises(NotADirectoryError):
        tree.listdir("usr/bin/env")
    assert len(tree) == 5


def test_layer_tree_shows_the_layer_as_stored() -> None:
    entries = _entries(
        [
            M("f", "a/.wh.gone"),
            M("f", "d/.wh..wh..opq"),
            M("f", "x/y", b"data"),
            M("h", "x/z", link="x/y"),
        ]
    )
    tree = LayerTree.build(entries, layer=3)
    assert _paths(tree) == ["", "a", "a/.wh.gone", "d", "d/.wh..wh..opq", "x", "x/y", "x/z"]
    assert tree.node("x/z").nlink == 2
    assert tree.node("x/z").layer == 3
    assert tree.node("a").implicit


def test_many_entries_build() -> None:
    layers = [
        [Entry(f"d{i % 300}/f{i}", Kind.FILE, size=i, ordinal=i) for i in range(30_000)]
        for _ in range(3)
    ]
    tree = MergedTree.build(layers)
    assert len(tree) == 30_000 + 300 + 1
    assert tree.node("d7/f7").layer == 2


# --- against an independent reference: extract and apply whiteouts by hand -------


NAMES = ["a", "b", "c", "dir", "sub"]


def _random_layers(seed: int, count: int = 4) -> list[list[M]]:
    rng = random.Random(seed)
    layers: list[list[M]] = []
    for n in range(count):
        members: list[M] = []
        used: set[str] = set()
        dirs: set[str] = set()
        files: list[tuple[str, int]] = []
        for _ in range(rng.randint(5, 14)):
            depth = rng.randint(1, 3)
            path = "/".join(rng.choice(NAMES) for _ in range(depth))
            # parents before children, and only directories have children
            if path in used or any(u.startswith(path + "/") for u in used):
                continue
            if any(path.startswith(u + "/") for u in used - dirs):
                continue
            used.add(path)
            roll = rng.random()
            if n and roll < 0.15:
                members.append(
                    M(
                        "f",
                        posixpath.join(posixpath.dirname(path), ".wh." + posixpath.basename(path)),
                    )
                )
            elif n and roll < 0.22:
                members.append(M("f", path + "/.wh..wh..opq"))
                if rng.random() < 0.5:
                    members.append(M("d", path, mode=0o750))
            elif roll < 0.45:
                members.append(M("d", path, mode=rng.choice([0o755, 0o700, 0o775])))
                dirs.add(path)
            elif roll < 0.55:
                members.append(M("l", "ln-" + path.replace("/", "-"), link=path))
            elif roll < 0.62:
                members.append(M("p", path))
            elif roll < 0.7 and files:
                target, mode = rng.choice(files)  # producers write the target's mode
                members.append(M("h", path, link=target, mode=mode))
            else:
                mode = rng.choice([0o644, 0o600, 0o755])
                members.append(M("f", path, os.urandom(rng.randint(0, 300)), mode=mode))
                files.append((path, mode))
        layers.append(members)
    return layers


def _reference(layer_tars: list[bytes], root: Path) -> None:
    """Apply layers the way a single-directory extractor does (OCI layer.md)."""
    for data in layer_tars:
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            members = tf.getmembers()
            for m in members:  # whiteouts first: they only hit lower layers
                parent, name = posixpath.split(m.name.rstrip("/"))
                if name == ".wh..wh..opq":
                    if (root / parent).is_dir() and not (root / parent).is_symlink():
                        for child in (root / parent).iterdir():
                            _rm(child)
                elif name.startswith(".wh.") and not name.startswith(".wh..wh."):
                    _rm(root / parent / name[4:])
            for m in members:
                name = posixpath.basename(m.name.rstrip("/"))
                if name.startswith(".wh."):
                    continue
                target = root / m.name
                for ancestor in reversed(target.relative_to(root).parents):
                    up = root / ancestor
                    if os.path.lexists(up) and not (up.is_dir() and not up.is_symlink()):
                        _rm(up)
                if os.path.lexists(target) and not (
                    m.isdir() and target.is_dir() and not target.is_symlink()
                ):
                    _rm(target)
                tf.extract(m, root, numeric_owner=True, filter="fully_trusted")


def _rm(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _walk_reference(root: Path) -> Iterator[tuple[str, str, int, int, str, int]]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = full.lstat()
            rel = str(full.relative_to(root))
            if stat.S_ISDIR(st.st_mode):
                yield rel, "dir", stat.S_IMODE(st.st_mode), 0, "", 0
            elif stat.S_ISLNK(st.st_mode):
                yield rel, "symlink", 0, 0, os.readlink(full), 1
            elif stat.S_ISFIFO(st.st_mode):
                yield rel, "fifo", stat.S_IMODE(st.st_mode), 0, "", st.st_nlink
            else:
                yield rel, "file", stat.S_IMODE(st.st_mode), st.st_size, "", st.st_nlink


def _walk_tree(tree: MergedTree) -> Iterator[tuple[str, str, int, int, str, int]]:
    for node in tree:
        if not node.path:
            continue
        e = node.entry
        if node.is_dir:
            yield node.path, "dir", e.mode, 0, "", 0
        elif e.kind is Kind.SYMLINK:
            yield node.path, "symlink", 0, 0, e.linkname, 1
        else:
            yield node.path, e.kind.value, e.mode, e.size, "", node.nlink


@pytest.mark.parametrize("seed", range(60))
def test_matches_reference_extraction(tmp_path: Path, seed: int) -> None:
    layers = _random_layers(seed)
    tars = [make_tar(layer) for layer in layers]
    old_umask = os.umask(0o022)
    try:
        _reference(tars, tmp_path)
    finally:
        os.umask(old_umask)
    tree = MergedTree.build([index_seekable(BlobFile(BytesReadAt(t)), len(t)) for t in tars])
    assert sorted(_walk_tree(tree)) == sorted(_walk_reference(tmp_path))
    # a directory's links: "." and its name, and each subdirectory's ".."
    for path, _, _ in os.walk(tmp_path):
        rel = os.path.relpath(path, tmp_path)
        node = tree.node("" if rel == "." else rel)
        subdirs = sum(1 for x in Path(path).iterdir() if x.is_dir() and not x.is_symlink())
        assert node.nlink == 2 + subdirs, rel
