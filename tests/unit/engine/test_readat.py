from __future__ import annotations

import io
from pathlib import Path

import pytest

from r8imfs.engine.codecs.plain import PlainLayerReader, build_plain_index
from r8imfs.engine.entry import Entry, Kind
from r8imfs.engine.readat import BlobFile, BytesReadAt, FileReadAt, read_entry
from tests.helpers.tars import M, make_tar


def test_blob_file_reads_seeks_and_stops_at_eof() -> None:
    data = bytes(range(256)) * 100
    f = BlobFile(BytesReadAt(data), buffer_size=1000)
    assert f.readable()
    assert f.seekable()
    assert not f.writable()
    assert f.read(10) == data[:10]
    assert f.seek(-5, io.SEEK_END) == len(data) - 5
    assert f.read(100) == data[-5:]
    assert f.read(1) == b""
    f.seek(3000)
    buf = bytearray(50)
    assert f.readinto(buf) == 50
    assert bytes(buf) == data[3000:3050]
    assert f.seek(7, io.SEEK_CUR) == 3057
    assert f.read() == data[3057:]
    with pytest.raises(ValueError, match="negative"):
        f.seek(-1)
    f.close()


def test_blob_file_works_with_buffered_reader() -> None:
    data = b"line one\nline two\n" * 1000
    with io.BufferedReader(BlobFile(BytesReadAt(data), buffer_size=64)) as f:
        assert f.readline() == b"line one\n"
        f.seek(len(data) - 9)
        assert f.read() == b"line two\n"


def test_file_read_at(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"0123456789")
    with FileReadAt(path) as ra:
        assert ra.size == 10
        assert ra.read_at(3, 4) == b"3456"
        assert ra.read_at(8, 100) == b"89"
        assert ra.read_at(20, 5) == b""


def test_progress_is_monotonic() -> None:
    seen: list[tuple[int, int]] = []
    data = make_tar([M("f", f"f{i}", b"x" * 3000) for i in range(10)])
    build_plain_index(BytesReadAt(data), progress=lambda done, total: seen.append((done, total)))
    assert seen
    assert all(total == len(data) for _, total in seen)
    assert [d for d, _ in seen] == sorted({d for d, _ in seen})


def test_read_entry_bounds() -> None:
    reader = PlainLayerReader(BytesReadAt(b"....hello world...."))
    entry = Entry("f", Kind.FILE, size=11, data_offset=4)
    assert read_entry(reader, entry, 0, 100) == b"hello world"
    assert read_entry(reader, entry, 6, 3) == b"wor"
    assert read_entry(reader, entry, 11, 3) == b""
    assert read_entry(reader, entry, 50, 3) == b""


def test_read_sparse_entry() -> None:
    # logical file: 5 zeros, "AB", 3 zeros, "CDE", 2 zeros (size 15)
    reader = PlainLayerReader(BytesReadAt(b"##ABCDE##"))
    entry = Entry("s", Kind.FILE, size=15, data_offset=2, sparse=((5, 2), (10, 3)))
    whole = b"\0" * 5 + b"AB" + b"\0" * 3 + b"CDE" + b"\0" * 2
    assert read_entry(reader, entry, 0, 15) == whole
    for off in range(15):
        assert read_entry(reader, entry, off, 4) == whole[off : off + 4]
