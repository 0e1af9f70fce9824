"""The upper-directory model of writable mounts, without FUSE.

The strongest check here: after any sequence of changes, the tar that
``commit`` would push (``write_layer_tar``), applied over the lower layers
by the read-only engine's own whiteout rules (``MergedTree``), gives exactly
the tree the overlay shows.
"""

from __future__ import annotations

import errno
import io
import os
import random
import tarfile
from pathlib import Path

import pytest

from r8imfs.engine.entry import Entry
from r8imfs.engine.merged import MergedTree
from r8imfs.engine.readat import BlobFile, BytesReadAt
from r8imfs.engine.tarindex import index_seekable
from r8imfs.engine.upper import (
    InLower,
    InUpper,
    Origin,
    Overlay,
    UpperDir,
    UpperInUse,
    default_location,
)
from r8imfs.engine.uppertar import write_layer_tar
from r8imfs.errors import UsageError
from tests.helpers.tars import M, make_tar

ORIGIN = Origin("reg/x:v1", "reg/x", "sha256:" + "a" * 64)
LOWER = [
    M("d", "etc"),
    M("f", "etc/os", b"debian"),
    M("d", "src"),
    M("f", "src/predict.py", b"code"),
    M("d", "src/weights"),
    M("f", "src/weights/a.bin", b"A" * 100),
    M("f", "src/weights/b.bin", b"B" * 50),
    M("d", "src/weights/sub"),
    M("f", "src/weights/sub/c.bin", b"C"),
    M("d", "src/weights/sub/deep"),
    M("f", "src/weights/sub/deep/d.bin", b"D"),
    M("l", "src/weights/link", link="a.bin"),
]


def _entries(members: list[M]) -> list[Entry]:
    data = make_tar(members)
    return index_seekable(BlobFile(BytesReadAt(data)), len(data))


@pytest.fixture
def lower_entries() -> list[Entry]:
    return _entries(LOWER)


@pytest.fixture
def overlay(tmp_path: Path, lower_entries: list[Entry]) -> Overlay:
    upper = UpperDir.prepare(tmp_path / "upper", ORIGIN, b"{}", b"{}")
    return Overlay(upper, MergedTree.build([lower_entries]))


def _copy_up(ov: Overlay, path: str, data: bytes) -> None:
    fd, tmp = ov.begin_copy_up()
    os.write(fd, data)
    os.close(fd)
    assert ov.install_copy_up(path, tmp)


def _view(ov: Overlay, path: str = "") -> dict[str, str]:
    """path → kind (+ body for files) of the overlay's merged view."""
    out: dict[str, str] = {}
    for name in ov.listdir(path):
        child = f"{path}/{name}" if path else name
        found = ov.find(child)
        assert found is not None, child
        if isinstance(found, InUpper):
            kind = "d" if os.path.isdir(ov.up(child)) and not os.path.islink(ov.up(child)) else ""
            if os.path.islink(ov.up(child)):
                out[child] = "l:" + os.readlink(ov.up(child))
            elif kind == "d":
                out[child] = "d"
                out.update(_view(ov, child))
            else:
                out[child] = "f:" + ov.up(child).read_bytes().decode()
        else:
            out.update(_lower_view(ov, found, child))
    return out


def _lower_view(ov: Overlay, found: InLower, child: str) -> dict[str, str]:
    node = found.node
    if node.is_dir:
        return {child: "d", **_view(ov, child)}
    if node.entry.linkname:
        return {child: "l:" + node.entry.linkname}
    body = {m.path: m.data for m in LOWER}[node.path]
    return {child: "f:" + body.decode()}


def _tree_view(tree: MergedTree, bodies: dict[str, bytes]) -> dict[str, str]:
    out = {}
    for node in tree:
        if not node.path:
            continue
        if node.is_dir:
            out[node.path] = "d"
        elif node.entry.linkname:
            out[node.path] = "l:" + node.entry.linkname
        else:
            out[node.path] = "f:" + bodies[node.path].decode()
    return out


def _committed_view(ov: Overlay, lower: list[Entry]) -> dict[str, str]:
    """The tree the committed layer makes over the lower layer, per merged.py."""
    buf = io.BytesIO()
    write_layer_tar(ov.upper.tree, buf)
    data = buf.getvalue()
    top = index_seekable(BlobFile(BytesReadAt(data)), len(data))
    tree = MergedTree.build([lower, top])
    bodies = {m.path: m.data for m in LOWER}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for member in tf:
            if member.isfile():
                f = tf.extractfile(member)
                assert f is not None
                bodies[member.name] = f.read()
    return _tree_view(tree, bodies)


# -- one change at a time ----------------------------------------------------------------


def test_delete_writes_a_whiteout_and_hides_the_name(overlay: Overlay) -> None:
    overlay.remove("src/weights/a.bin", directory=False)
    assert overlay.find("src/weights/a.bin") is None
    assert "a.bin" not in overlay.listdir("src/weights")
    assert (overlay.upper.tree / "src/weights/.wh.a.bin").is_file()
    assert overlay.find("src/weights/b.bin") is not None


def test_replaced_directory_is_opaque(overlay: Overlay) -> None:
    for path in ("src/weights/sub/deep/d.bin", "src/weights/sub/c.bin"):
        overlay.remove(path, directory=False)
    overlay.remove("src/weights/sub/deep", directory=True)
    overlay.remove("src/weights/sub", directory=True)
    assert (overlay.upper.tree / "src/weights/.wh.sub").exists()
    overlay.mkdir("src/weights/sub", 0o755, (0, 0))
    assert overlay.listdir("src/weights/sub") == []
    assert (overlay.upper.tree / "src/weights/sub/.wh..wh..opq").exists()
    assert not (overlay.upper.tree / "src/weights/.wh.sub").exists()


def test_errors_of_the_namespace(overlay: Overlay) -> None:
    cases = [
        (lambda: overlay.remove("src/weights/sub", directory=True), errno.ENOTEMPTY),
        (lambda: overlay.remove("src/weights", directory=False), errno.EISDIR),
        (lambda: overlay.remove("src/weights/a.bin", directory=True), errno.ENOTDIR),
        (lambda: overlay.remove("nope", directory=False), errno.ENOENT),
        (lambda: overlay.mkdir("src/weights/a.bin", 0o755, (0, 0)), errno.EEXIST),
        (lambda: overlay.mkdir("src/.wh.x", 0o755, (0, 0)), errno.EPERM),
        (lambda: overlay.rename("src/weights/sub", "src/sub2"), errno.EXDEV),
        (lambda: overlay.rename("src/weights/a.bin", "src/x"), errno.EXDEV),  # copy up first
    ]
    for call, code in cases:
        with pytest.raises(OSError, match=os.strerror(code)) as info:
            call()
        assert info.value.errno == code


def test_rename_of_a_copied_up_file(overlay: Overlay, lower_entries: list[Entry]) -> None:
    _copy_up(overlay, "src/weights/a.bin", b"A" * 100)
    overlay.rename("src/weights/a.bin", "src/weights/sub/moved.bin")
    assert overlay.find("src/weights/a.bin") is None
    found = overlay.find("src/weights/sub/moved.bin")
    assert isinstance(found, InUpper) and found.st.st_size == 100
    assert _committed_view(overlay, lower_entries) == _view(overlay)


def test_renamed_new_directory_over_an_emptied_lower_one(
    overlay: Overlay, lower_entries: list[Entry]
) -> None:
    overlay.mkdir("src/new", 0o755, (0, 0))
    fd = overlay.create("src/new/f", 0o644, (0, 0), os.O_WRONLY)
    os.write(fd, b"new")
    os.close(fd)
    overlay.remove("src/weights/sub/deep/d.bin", directory=False)
    overlay.rename("src/new", "src/weights/sub/deep")  # lower deep is empty now: replaced
    assert overlay.listdir("src/weights/sub/deep") == ["f"]
    assert _committed_view(overlay, lower_entries) == _view(overlay)


def test_upper_dir_records(tmp_path: Path) -> None:
    root = tmp_path / "u"
    upper = UpperDir.prepare(root, ORIGIN, b"m", b"c")
    assert not upper.has_changes() and not upper.uncommitted()
    (upper.tree / "x").write_bytes(b"1")
    assert upper.uncommitted()
    upper.note_commit("reg/y@sha256:...", upper.fingerprint())
    assert not upper.uncommitted()
    (upper.tree / "x").write_bytes(b"22")
    assert upper.uncommitted()
    assert UpperDir.prepare(root, ORIGIN, b"m", b"c").base() == (b"m", b"c")
    other = Origin("reg/x:v2", "reg/x", "sha256:" + "b" * 64)
    with pytest.raises(UsageError, match="holds changes to reg/x:v1"):
        UpperDir.prepare(root, other, b"m", b"c")
    upper.lock()
    with pytest.raises(UpperInUse):
        UpperDir(root).lock()
    upper.unlock()
    UpperDir(root).lock()
    a = default_location(tmp_path, "/mnt/a", ORIGIN.manifest_digest)
    assert a == default_location(tmp_path, "/mnt/a", ORIGIN.manifest_digest)
    assert a != default_location(tmp_path, "/mnt/b", ORIGIN.manifest_digest)


# -- any sequence of changes commits to what the mount showed -----------------------------


EXPECTED_REFUSALS = (
    errno.EXDEV,
    errno.EINVAL,
    errno.ENOTEMPTY,
    errno.EPERM,
    errno.EEXIST,
    errno.ENOENT,
)


def _random_step(ov: Overlay, rng: random.Random, n: int) -> None:
    view = _view(ov)
    paths = sorted(view)
    dirs = [""] + [p for p in paths if view[p] == "d"]
    pick = rng.choice(paths) if paths else ""
    where = rng.choice(dirs)
    new = f"{where}/n{n}" if where else f"n{n}"
    op = rng.choice(["rm", "mkdir", "create", "rename", "symlink", "copyup", "recreate"])
    if op == "recreate":  # a deleted lower name comes back: whiteout removed, maybe opaque
        gone = [m.path for m in LOWER if m.path not in view]
        new = rng.choice(gone) if gone else new
        op = rng.choice(["mkdir", "create"])
    try:
        if op == "rm" and pick:
            if view[pick] == "d":
                for child in sorted((p for p in paths if p.startswith(pick + "/")), reverse=True):
                    ov.remove(child, directory=view[child] == "d")
            ov.remove(pick, directory=view[pick] == "d")
        elif op == "mkdir":
            ov.mkdir(new, 0o755, (0, 0))
        elif op == "create":
            os.close(ov.create(new, 0o644, (0, 0), os.O_WRONLY))
        elif op == "symlink":
            ov.symlink(new, "target", (0, 0))
        elif op == "copyup" and pick and view[pick].startswith("f:"):
            if isinstance(ov.find(pick), InLower):
                _copy_up(ov, pick, view[pick][2:].encode() + b"+")
        elif op == "rename" and pick:
            if isinstance(ov.find(pick), InLower) and view[pick].startswith("f:"):
                _copy_up(ov, pick, view[pick][2:].encode())
            ov.rename(pick, new)
    except OSError as exc:  # refusals a real filesystem makes too; anything else fails
        if exc.errno not in EXPECTED_REFUSALS:
            raise


@pytest.mark.parametrize("seed", range(40))
def test_random_changes_commit_to_the_tree_shown(
    tmp_path: Path, lower_entries: list[Entry], seed: int
) -> None:
    upper = UpperDir.prepare(tmp_path / "upper", ORIGIN, b"{}", b"{}")
    ov = Overlay(upper, MergedTree.build([lower_entries]))
    rng = random.Random(seed)
    for n in range(25):
        _random_step(ov, rng, n)
        assert _committed_view(ov, lower_entries) == _view(ov), f"after step {n}"
