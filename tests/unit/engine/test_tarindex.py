from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from r8imfs.engine.codecs.plain import PlainLayerReader, build_plain_index
from r8imfs.engine.entry import Entry, Kind
from r8imfs.engine.readat import BlobFile, BytesReadAt, CountingReadAt, read_entry
from r8imfs.engine.tarindex import ForwardFile, index_seekable, index_stream
from r8imfs.errors import CorruptLayer, UnsafeLayer
from tests.helpers.tars import M, MiB, make_tar


def _seekable(data: bytes) -> list[Entry]:
    return index_seekable(BlobFile(BytesReadAt(data)), len(data))


def _stream(data: bytes, chunk: int = 1000) -> list[Entry]:
    entries, size = index_stream(iter([data[i : i + chunk] for i in range(0, len(data), chunk)]))
    assert size == len(data)
    return entries


INDEXERS: list[Callable[[bytes], list[Entry]]] = [_seekable, _stream]
MODES = pytest.mark.parametrize("index", INDEXERS, ids=["seekable", "stream"])

LONG = "deep/" + "x" * 120 + "/name-" + "y" * 40
ALL_KINDS = [
    M("d", "./etc/", mode=0o750),
    M("f", "./etc/passwd", b"root:x:0:0\n", mode=0o600, uid=7),
    M("l", "./etc/alias", link="../usr/lib/target-" + "z" * 110),
    M("h", "./etc/hard", link="./etc/passwd"),
    M("c", "./dev/null", major=1, minor=3, mode=0o666),
    M("b", "./dev/sda", major=8, minor=0),
    M("p", "./run/fifo"),
    M("f", LONG, b"long name body"),
    M("f", "/abs/file", b"leading slash"),
]


@MODES
@pytest.mark.parametrize(
    "fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=str
)
def test_all_kinds_and_formats(index: Callable[[bytes], list[Entry]], fmt: int) -> None:
    members = ALL_KINDS if fmt != tarfile.USTAR_FORMAT else ALL_KINDS[:2] + ALL_KINDS[3:7]
    data = make_tar(members, fmt)
    got = {e.path: e for e in index(data)}
    assert got["etc"].kind is Kind.DIR
    assert got["etc"].mode == 0o750
    passwd = got["etc/passwd"]
    assert (passwd.kind, passwd.mode, passwd.uid, passwd.size) == (Kind.FILE, 0o600, 7, 11)
    assert data[passwd.data_offset : passwd.data_offset + passwd.size] == b"root:x:0:0\n"
    assert passwd.mtime == 1_700_000_000
    assert got["etc/hard"].kind is Kind.HARDLINK
    assert got["etc/hard"].linkname == "etc/passwd"
    null = got["dev/null"]
    assert (null.kind, null.devmajor, null.devminor, null.mode) == (Kind.CHARDEV, 1, 3, 0o666)
    assert got["dev/sda"].kind is Kind.BLOCKDEV
    assert got["run/fifo"].kind is Kind.FIFO
    if fmt != tarfile.USTAR_FORMAT:
        assert got["etc/alias"].linkname == "../usr/lib/target-" + "z" * 110  # not normalised
        long = got[LONG]
        assert data[long.data_offset : long.data_offset + long.size] == b"long name body"
        assert "abs/file" in got
    assert [e.ordinal for e in got.values()] == sorted(e.ordinal for e in got.values())


@MODES
def test_pax_xattrs(index: Callable[[bytes], list[Entry]]) -> None:
    pax = {
        "SCHILY.xattr.user.foo": "bar",
        "SCHILY.xattr.security.capability": b"\x01\x00\x00\x02\xff".decode(
            "utf-8", "surrogateescape"
        ),
        "LIBARCHIVE.xattr.user.with%20space": "aGVsbG8",
    }
    data = make_tar([M("f", "bin/ping", b"elf", pax=pax)])
    (entry,) = index(data)
    assert entry.xattrs == {
        "user.foo": b"bar",
        "security.capability": b"\x01\x00\x00\x02\xff",
        "user.with space": b"hello",
    }


@MODES
def test_later_duplicates_win(index: Callable[[bytes], list[Entry]]) -> None:
    data = make_tar([M("f", "a", b"one"), M("f", "b", b"x"), M("f", "./a", b"second")])
    entries = index(data)
    assert [e.path for e in entries] == ["b", "a"]
    a = entries[1]
    assert a.ordinal == 2
    assert data[a.data_offset : a.data_offset + a.size] == b"second"


@MODES
def test_root_entry_and_normalisation(index: Callable[[bytes], list[Entry]]) -> None:
    data = make_tar([M("d", "./"), M("f", ".//x/./y//z", b""), M("h", "/q", link="/x/./y/z")])
    got = {e.path: e for e in index(data)}
    assert set(got) == {"", "x/y/z", "q"}
    assert got[""].kind is Kind.DIR
    assert got["q"].linkname == "x/y/z"


@MODES
def test_dotdot_is_unsafe(index: Callable[[bytes], list[Entry]]) -> None:
    with pytest.raises(UnsafeLayer, match=r"\.\."):
        index(make_tar([M("f", "a/../../etc/passwd", b"x")]))


@MODES
@pytest.mark.parametrize("cut", ["end-blocks", "padding", "mid-header"])
def test_missing_end_of_archive_still_indexes(
    index: Callable[[bytes], list[Entry]], cut: str
) -> None:
    members = [M("f", "a", b"a" * 700), M("f", "b", b"b" * 10)]
    data = make_tar(members, end=False)
    assert len(data) % 512 == 0
    if cut == "padding":
        data = data[: -(512 - 10)]
    elif cut == "mid-header":
        data = data + make_tar([M("f", "c", b"c")])[:200]
    entries = index(data)
    assert [e.path for e in entries] == ["a", "b"]


@MODES
def test_body_cut_short_is_corrupt(index: Callable[[bytes], list[Entry]]) -> None:
    data = make_tar([M("f", "a", b"a" * 700), M("f", "big", b"b" * 5000)])
    big = _seekable(data)[1]
    with pytest.raises(CorruptLayer, match="big"):
        index(data[: big.data_offset + 100])


@MODES
def test_corrupt_header_in_the_middle(index: Callable[[bytes], list[Entry]]) -> None:
    data = bytearray(make_tar([M("f", f"f{i}", b"z" * 600) for i in range(4)], tarfile.GNU_FORMAT))
    header = _seekable(bytes(data))[2].data_offset - 512
    data[header + 20 : header + 30] = b"\xffgarbage!\xff"
    with pytest.raises(CorruptLayer, match="header|checksum"):
        index(bytes(data))


@MODES
def test_corrupt_header_after_pax_header(index: Callable[[bytes], list[Entry]]) -> None:
    members = [M("f", "a", b"1"), M("f", "b", b"2", pax={"comment": "hello"}), M("f", "c", b"3")]
    data = bytearray(make_tar(members))
    b = _seekable(bytes(data))[1]
    header = b.data_offset - 512  # the ustar header that follows the 'x' header
    data[header + 148 : header + 156] = b"1234567\0"  # wrong checksum
    with pytest.raises(CorruptLayer, match="checksum"):
        index(bytes(data))


@MODES
def test_not_a_tar(index: Callable[[bytes], list[Entry]]) -> None:
    with pytest.raises(CorruptLayer):
        index(os.urandom(4096))


@MODES
def test_empty_stream_and_empty_archive(index: Callable[[bytes], list[Entry]]) -> None:
    assert index(b"") == []
    assert index(make_tar([])) == []


def test_plain_index_never_reads_bodies() -> None:
    members = [M("f", f"blob{i}", bytes([i]) * MiB) for i in range(20)]
    data = make_tar(members)
    counting = CountingReadAt(BytesReadAt(data))
    entries = build_plain_index(counting)
    assert len(entries) == 20
    # each header costs at most one small buffered read; bodies are skipped
    assert counting.bytes_read <= 22 * 16 * 1024
    assert counting.bytes_read < len(data) / 50
    reader = PlainLayerReader(BytesReadAt(data))
    e = entries[7]
    assert read_entry(reader, e, MiB - 3, 10) == b"\x07" * 3


def test_forward_file_seeks_forward_only() -> None:
    f = ForwardFile(iter([b"abc", b"", b"defg", b"hij"]))
    assert f.read(2) == b"ab"
    f.seek(4)
    assert f.read(4) == b"efgh"
    with pytest.raises(OSError, match="forward"):
        f.seek(0)
    assert f.drain() == 10
    assert f.read(1) == b""


gnu_tar = pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")


def _tree(root: Path) -> None:
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "file.txt").write_bytes(b"hello\n")
    (root / "d" / ("L" * 150)).write_bytes(b"long")
    (root / "d" / "sub" / "link").symlink_to("../file.txt")
    os.link(root / "d" / "file.txt", root / "d" / "hard")
    os.mkfifo(root / "d" / "fifo")
    (root / "d" / "exec").write_bytes(b"#!/bin/sh\n")
    (root / "d" / "exec").chmod(0o4755)


@gnu_tar
@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_gnu_tar_archives(tmp_path: Path, fmt: str) -> None:
    _tree(tmp_path / "src")
    out = tmp_path / "layer.tar"
    subprocess.run(
        ["tar", "-C", str(tmp_path / "src"), f"--format={fmt}", "-cf", str(out), "."], check=True
    )
    data = out.read_bytes()
    for entries in (_seekable(data), _stream(data, 4096)):
        got = {e.path: e for e in entries}
        assert got["d/file.txt"].size == 6
        assert got["d/sub/link"].linkname == "../file.txt"
        assert got["d/fifo"].kind is Kind.FIFO
        assert got["d/exec"].mode == 0o4755
        assert ("L" * 150) in got["d/" + "L" * 150].path
        hard = {e.path for e in entries if e.kind is Kind.HARDLINK}
        assert len(hard) == 1
        assert got[hard.pop()].linkname in {"d/file.txt", "d/hard"}


@gnu_tar
def test_gnu_tar_xattrs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    try:
        os.setxattr(src / "f", "user.r8imfs", b"\x00\xffvalue")
    except OSError:
        pytest.skip("filesystem has no user xattrs")
    out = tmp_path / "x.tar"
    subprocess.run(
        [
            "tar",
            "-C",
            str(src),
            "--format=posix",
            "--xattrs",
            "--xattrs-include=*",
            "-cf",
            str(out),
            "f",
        ],
        check=True,
    )
    (entry,) = _seekable(out.read_bytes())
    assert entry.xattrs["user.r8imfs"] == b"\x00\xffvalue"


@gnu_tar
@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_gnu_tar_sparse_file(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    content = bytearray(3 * MiB)
    content[100:200] = b"A" * 100
    content[2 * MiB : 2 * MiB + 5000] = b"B" * 5000
    with open(src / "sparse", "wb") as f:
        f.write(content[:200])
        f.seek(2 * MiB)
        f.write(content[2 * MiB : 2 * MiB + 5000])
        f.truncate(3 * MiB)
    out = tmp_path / "s.tar"
    subprocess.run(
        ["tar", "-C", str(src), f"--format={fmt}", "--sparse", "-cf", str(out), "sparse"],
        check=True,
    )
    data = out.read_bytes()
    (entry,) = _seekable(data)
    assert entry.size == 3 * MiB
    reader = PlainLayerReader(BytesReadAt(data))
    assert read_entry(reader, entry, 0, 3 * MiB) == bytes(content)
    assert read_entry(reader, entry, 2 * MiB - 10, 20) == bytes(
        content[2 * MiB - 10 : 2 * MiB + 10]
    )
