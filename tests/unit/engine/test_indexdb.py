from __future__ import annotations

import gzip
import io
import sqlite3
from pathlib import Path

import pytest

from r8imfs.engine import indexdb
from r8imfs.engine.codecs.zstdwrite import write_seekable
from r8imfs.engine.entry import Kind
from r8imfs.engine.indexdb import FORMAT_VERSION, LayerIndex, index_path, load_or_build
from r8imfs.engine.readat import BytesReadAt, CountingReadAt, read_entry
from r8imfs.errors import InvalidReference, UnsupportedMediaType
from r8imfs.oci import mediatypes as mt
from tests.helpers.tars import M, make_tar

DIGEST = "sha256:" + "ab" * 32
MEMBERS = [
    M("d", "./"),
    M("d", "etc", mode=0o700),
    M("f", "etc/cap", b"binary", pax={"SCHILY.xattr.security.capability": "\udcff\x01"}),
    M("f", "caf\udce9/latin1-name", b"not utf-8 name"),
    M("l", "etc/link", link="/abs/\udcfftarget"),
    M("h", "etc/hard", link="etc/cap"),
    M("c", "dev/null", major=1, minor=3),
    M("f", "big", b"0123456789" * 100_000),
]


def _blob(compression: str) -> tuple[bytes, bytes, str]:
    tar = make_tar(MEMBERS)
    if compression == "gzip":
        return tar, gzip.compress(tar, mtime=0), mt.OCI_LAYER_GZIP
    if compression == "zstd":
        out = io.BytesIO()
        write_seekable(io.BytesIO(tar), out, frame_size=64 * 1024)
        return tar, out.getvalue(), mt.OCI_LAYER_ZSTD
    return tar, tar, mt.OCI_LAYER


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_build_store_load(tmp_path: Path, compression: str) -> None:
    tar, blob, media_type = _blob(compression)
    built = load_or_build(tmp_path, DIGEST, media_type, BytesReadAt(blob), len(blob))
    assert built.compression == compression
    assert built.uncompressed_size == len(tar)
    path = index_path(tmp_path, DIGEST)
    assert path == tmp_path / "index" / "sha256" / f"{'ab' * 32}.sqlite"
    assert path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]

    counting = CountingReadAt(BytesReadAt(blob))
    loaded = load_or_build(tmp_path, DIGEST, media_type, counting, len(blob))
    assert counting.calls == 0
    assert loaded == built  # every field but the ReadAt
    by_path = loaded.by_path()
    assert by_path["etc/cap"].xattrs == {"security.capability": b"\xff\x01"}
    assert by_path["caf\udce9/latin1-name"].size == 14
    assert by_path["etc/link"].linkname == "/abs/\udcfftarget"
    assert by_path["etc/hard"].kind is Kind.HARDLINK
    assert by_path["dev/null"].devminor == 3
    reader = loaded.open_reader()
    try:
        big = by_path["big"]
        assert read_entry(reader, big, 999_990, 100) == b"0123456789"
        assert reader.pread(0, len(tar)) == tar
    finally:
        reader.close()


def _built(tmp_path: Path) -> tuple[Path, bytes]:
    _, blob, _ = _blob("gzip")
    load_or_build(tmp_path, DIGEST, mt.OCI_LAYER_GZIP, BytesReadAt(blob), len(blob))
    return index_path(tmp_path, DIGEST), blob


def _rebuilds(tmp_path: Path, blob: bytes) -> bool:
    counting = CountingReadAt(BytesReadAt(blob))
    index = load_or_build(tmp_path, DIGEST, mt.OCI_LAYER_GZIP, counting, len(blob))
    assert len(index.entries) == len(MEMBERS)
    assert indexdb.load(index_path(tmp_path, DIGEST), DIGEST) is not None  # healed
    return counting.calls > 0


def test_garbage_file_is_rebuilt(tmp_path: Path) -> None:
    path, blob = _built(tmp_path)
    path.write_bytes(b"this is not a database" * 100)
    assert _rebuilds(tmp_path, blob)


def test_truncated_file_is_rebuilt(tmp_path: Path) -> None:
    path, blob = _built(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert _rebuilds(tmp_path, blob)


def test_empty_file_is_rebuilt(tmp_path: Path) -> None:
    path, blob = _built(tmp_path)
    path.write_bytes(b"")
    assert _rebuilds(tmp_path, blob)


def test_old_format_version_is_rebuilt(tmp_path: Path) -> None:
    path, blob = _built(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {FORMAT_VERSION - 1}")
    db.close()
    assert _rebuilds(tmp_path, blob)


def test_missing_rows_are_rebuilt(tmp_path: Path) -> None:
    path, blob = _built(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM entries WHERE ordinal = (SELECT MAX(ordinal) FROM entries)")
    db.close()
    assert _rebuilds(tmp_path, blob)


def test_index_of_another_digest_is_rebuilt(tmp_path: Path) -> None:
    path, blob = _built(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET digest = ?", ("sha256:" + "cd" * 32,))
    db.close()
    assert _rebuilds(tmp_path, blob)


def test_cached_index_is_used_without_rebuild(tmp_path: Path) -> None:
    _, blob = _built(tmp_path)
    assert not _rebuilds(tmp_path, blob)


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="tar"):
        load_or_build(tmp_path, DIGEST, mt.OCI_LAYER, BytesReadAt(b"\x01" * 2048), 2048)
    assert not index_path(tmp_path, DIGEST).exists()


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(db: sqlite3.Connection, index: LayerIndex) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(indexdb, "_fill", boom)
    tar = make_tar(MEMBERS)
    with pytest.raises(OSError, match="disk full"):
        load_or_build(tmp_path, DIGEST, mt.OCI_LAYER, BytesReadAt(tar), len(tar))
    assert list(index_path(tmp_path, DIGEST).parent.iterdir()) == []


def test_unknown_media_type(tmp_path: Path) -> None:
    weird = "application/vnd.oci.image.layer.v1.tar+bzip2"
    with pytest.raises(UnsupportedMediaType, match=r"tar\+bzip2"):
        load_or_build(tmp_path, DIGEST, weird, BytesReadAt(b""), 0)


def test_bad_digest(tmp_path: Path) -> None:
    with pytest.raises(InvalidReference):
        index_path(tmp_path, "sha256:../../etc")


def test_schema_file_is_packaged() -> None:
    sql = indexdb.schema_sql()
    assert "CREATE TABLE entries" in sql
    assert "CREATE TABLE checkpoints" in sql
