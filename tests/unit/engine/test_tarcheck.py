"""Validation of affix tars: a table of archives and what becomes of them."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from r8imfs.engine import tarcheck
from r8imfs.errors import CorruptLayer, UnsafeLayer
from tools.demoimage import tar_of


def _hardlink_tar(target: str, first: str | None = "src/weights/a.bin") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        if first:
            info = tarfile.TarInfo(first)
            info.size = 3
            tf.addfile(info, io.BytesIO(b"abc"))
        link = tarfile.TarInfo("src/weights/b.bin")
        link.type, link.linkname = tarfile.LNKTYPE, target
        tf.addfile(link)
    return buf.getvalue()


OK = [
    ("weights only", tar_of({"src/weights": None, "src/weights/m.bin": b"x" * 10})),
    ("dot-slash names", tar_of({"./src/weights/m.bin": b"x"})),
    ("parent dirs are fine", tar_of({"src": None, "src/weights": None, "src/weights/a": b"1"})),
    ("nested weights", tar_of({"src/weights/sub/dir/x.safetensors": b"1"})),
    ("symlink inside", tar_of({"src/weights/cur": "v1", "src/weights/v1": None})),
    ("absolute symlink target", tar_of({"src/weights/cache": "/root/.cache/model"})),
    ("symlink up but inside", tar_of({"src/weights/p": "../predict.py"})),
    ("hardlink to earlier entry", _hardlink_tar("src/weights/a.bin")),
    ("whiteout under weights", tar_of({"src/weights/.wh.old.bin": b""})),
]


@pytest.mark.parametrize(("name", "data"), OK, ids=[c[0] for c in OK])
def test_accepted(name: str, data: bytes) -> None:
    summary = tarcheck.check(io.BytesIO(data))
    assert summary.entries >= 1


UNSAFE = [
    ("absolute path", tar_of({"/etc/passwd": b"x"}), "absolute path"),
    ("dot-dot", tar_of({"src/weights/../../etc/passwd": b"x"}), "'..'"),
    ("symlink escaping", tar_of({"src/weights/e": "../../../etc"}), "climbs out"),
    (
        "write through symlink",
        tar_of({"src/weights/d": "/etc", "src/weights/d/passwd": b"x"}),
        "below symlink",
    ),
    ("hardlink to absolute", _hardlink_tar("/etc/shadow", None), "absolute path"),
    ("hardlink to lower layer", _hardlink_tar("src/weights/zzz", None), "not earlier"),
    ("hardlink dot-dot", _hardlink_tar("src/../etc/passwd", None), "'..'"),
]


@pytest.mark.parametrize(("name", "data", "message"), UNSAFE, ids=[c[0] for c in UNSAFE])
def test_unsafe_refused_even_with_allow_overwrite(name: str, data: bytes, message: str) -> None:
    with pytest.raises(UnsafeLayer, match=message):
        tarcheck.check(io.BytesIO(data), allow_overwrite=True)


def test_outside_prefix_names_the_files() -> None:
    data = tar_of({"src/predict.py": b"x", "src/weights/ok": b"y", "etc/passwd": b"z"})
    with pytest.raises(UnsafeLayer) as info:
        tarcheck.check(io.BytesIO(data))
    message = str(info.value)
    assert "src/predict.py" in message
    assert "etc/passwd" in message
    assert "src/weights/ok" not in message
    assert "--allow-overwrite" in message
    assert tarcheck.check(io.BytesIO(data), allow_overwrite=True).files == 3


def test_symlink_outside_prefix_counts_as_overwrite() -> None:
    with pytest.raises(UnsafeLayer, match="src/predict.py"):
        tarcheck.check(io.BytesIO(tar_of({"src/predict.py": "/bin/true"})))


def test_long_listing_is_cut() -> None:
    data = tar_of({f"src/f{i}.py": b"x" for i in range(30)})
    with pytest.raises(UnsafeLayer, match="and 10 more"):
        tarcheck.check(io.BytesIO(data))


def test_other_prefix() -> None:
    data = tar_of({"opt/models/m.bin": b"x"})
    assert tarcheck.check(io.BytesIO(data), prefix="opt/models/").files == 1
    with pytest.raises(UnsafeLayer):
        tarcheck.check(io.BytesIO(data))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (gzip.compress(tar_of({"src/weights/a": b"1"})), "gzip-compressed"),
        (b"\x28\xb5\x2f\xfd" + b"\0" * 600, "zstd-compressed"),
        (b"this is not a tar archive at all" * 40, "not a readable tar"),
        (b"\0" * 1024, "no entries"),
        (tar_of({"src/weights/a": b"1" * 5000})[:1024], "not a readable tar"),
    ],
    ids=["empty", "gzip", "zstd", "text", "only end blocks", "truncated"],
)
def test_not_a_plain_tar(data: bytes, message: str) -> None:
    with pytest.raises(CorruptLayer, match=message):
        tarcheck.check(io.BytesIO(data))


@pytest.mark.parametrize(
    ("link_dir", "target", "escapes"),
    [
        ("src/weights", "x", False),
        ("src/weights", "../x", False),
        ("src/weights", "../../x", False),
        ("src/weights", "../../../x", True),
        ("", "..", True),
        ("a", "b/../../..", True),
        ("a", "/abs/../../..", False),
        ("a", "./././x", False),
    ],
)
def test_climbs_out(link_dir: str, target: str, escapes: bool) -> None:
    assert tarcheck.climbs_out(link_dir, target) is escapes
