"""Decoded copies of layers: built in the indexing pass, verified, evictable."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import time
from contextlib import closing
from pathlib import Path

import pytest
import zstandard

from r8imfs.cache._blobfiles import evict
from r8imfs.engine.codecs.zstdwrite import write_seekable
from r8imfs.engine.decodedcopy import DecodedReader, decoded_path, worth_keeping
from r8imfs.engine.indexdb import load_cached, load_or_build
from r8imfs.engine.readat import BytesReadAt, read_entry
from r8imfs.errors import CorruptLayer, DigestMismatch
from r8imfs.oci import mediatypes as mt
from tests.helpers.tars import M, make_tar

MEMBERS = [
    M("d", "src/weights"),
    M("f", "src/weights/model.bin", random.Random(7).randbytes(3 * 1024 * 1024 + 5)),
    M("f", "src/weights/config.json", b'{"dim": 8}'),
    M("l", "src/weights/latest", link="model.bin"),
]


def _layer() -> tuple[bytes, bytes, str]:
    tar = make_tar(MEMBERS)
    blob = gzip.compress(tar, mtime=0)
    return tar, blob, "sha256:" + hashlib.sha256(blob).hexdigest()


def _tmp_files(cache: Path) -> list[Path]:
    return list(cache.glob("decoded/*/.*.tmp"))


def test_the_indexing_pass_keeps_a_verified_copy_that_serves_reads(tmp_path: Path) -> None:
    tar, blob, digest = _layer()
    index = load_or_build(
        tmp_path, digest, mt.OCI_LAYER_GZIP, BytesReadAt(blob), len(blob), keep_decoded=True
    )
    copy = decoded_path(tmp_path, digest)
    assert copy.read_bytes() == tar
    assert index.checkpoints == b"" and index.uncompressed_size == len(tar)
    assert not _tmp_files(tmp_path)
    by_path = index.by_path()
    with closing(index.open_reader()) as reader:
        assert isinstance(reader, DecodedReader)
        model = by_path["src/weights/model.bin"]
        assert read_entry(reader, model, 0, model.size) == MEMBERS[1].data
        rng = random.Random(1)
        for _ in range(50):
            off, size = rng.randrange(len(tar)), rng.randrange(1, 200_000)
            assert reader.pread(off, size) == tar[off : off + size]
            hit = reader.cached(off, size)  # page cache only: the bytes or None
            assert hit is None or hit == tar[off : off + size]
    # a second process finds the index and the copy: nothing is read from the blob
    again = load_cached(tmp_path, digest, mt.OCI_LAYER_GZIP, len(blob))
    assert again is not None and again.entries == index.entries
    assert again.decoded == copy


def test_a_blob_that_does_not_match_its_digest_leaves_no_copy(tmp_path: Path) -> None:
    _, blob, _ = _layer()
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatch):
        load_or_build(
            tmp_path, wrong, mt.OCI_LAYER_GZIP, BytesReadAt(blob), len(blob), keep_decoded=True
        )
    assert not decoded_path(tmp_path, wrong).exists()
    assert not _tmp_files(tmp_path)
    assert load_cached(tmp_path, wrong, mt.OCI_LAYER_GZIP, len(blob)) is None


def test_a_blob_that_does_not_inflate_leaves_no_copy(tmp_path: Path) -> None:
    _, blob, _ = _layer()
    broken = blob[:5000] + bytes(b ^ 0x5A for b in blob[5000:6000]) + blob[6000:]
    digest = "sha256:" + hashlib.sha256(broken).hexdigest()
    with pytest.raises(CorruptLayer):
        load_or_build(
            tmp_path,
            digest,
            mt.OCI_LAYER_GZIP,
            BytesReadAt(broken),
            len(broken),
            keep_decoded=True,
        )
    assert not decoded_path(tmp_path, digest).exists()
    assert not _tmp_files(tmp_path)


def test_an_index_whose_copy_is_gone_is_rebuilt_with_checkpoints(tmp_path: Path) -> None:
    tar, blob, digest = _layer()
    load_or_build(
        tmp_path, digest, mt.OCI_LAYER_GZIP, BytesReadAt(blob), len(blob), keep_decoded=True
    )
    decoded_path(tmp_path, digest).unlink()
    assert load_cached(tmp_path, digest, mt.OCI_LAYER_GZIP, len(blob)) is None
    index = load_or_build(tmp_path, digest, mt.OCI_LAYER_GZIP, BytesReadAt(blob), len(blob))
    assert index.checkpoints  # zran this time
    model = index.by_path()["src/weights/model.bin"]
    with closing(index.open_reader()) as reader:
        assert read_entry(reader, model, 0, model.size) == MEMBERS[1].data


def test_a_copy_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    tar, blob, digest = _layer()
    index = load_or_build(
        tmp_path, digest, mt.OCI_LAYER_GZIP, BytesReadAt(blob), len(blob), keep_decoded=True
    )
    with decoded_path(tmp_path, digest).open("r+b") as f:
        f.truncate(len(tar) - 512)
    with pytest.raises(CorruptLayer, match="bytes, not"):
        index.open_reader()


def test_eviction_takes_copies_least_recently_used_first_but_not_open_ones(
    tmp_path: Path,
) -> None:
    copies = []
    for n in range(3):
        tar = make_tar([M("f", f"f{n}", random.Random(n).randbytes(1024 * 1024))])
        blob = gzip.compress(tar, mtime=0)
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        load_or_build(
            tmp_path, digest, mt.OCI_LAYER_GZIP, BytesReadAt(blob), len(blob), keep_decoded=True
        )
        path = decoded_path(tmp_path, digest)
        past = time.time() - 1000 + n * 100  # copy 0 is the least recently used
        os.utime(path, (past, past))
        copies.append((path, len(tar)))
    # copy 0 in use: eviction must skip it and take copy 1 instead
    with DecodedReader(*copies[0]):
        evict(tmp_path, max_bytes=2 * 1024 * 1024 + 300 * 1024, keep=frozenset())
    assert [path.exists() for path, _ in copies] == [True, False, True]


def test_a_plain_zstd_layer_keeps_a_copy_and_a_seekable_one_does_not(tmp_path: Path) -> None:
    tar = make_tar(MEMBERS)
    plain = zstandard.ZstdCompressor(level=3).compress(tar)  # one frame, no seek table
    out = io.BytesIO()
    write_seekable(io.BytesIO(tar), out, frame_size=256 * 1024)
    seekable = out.getvalue()
    model = MEMBERS[1].data
    for blob, kept in ((plain, True), (seekable, False)):
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        index = load_or_build(
            tmp_path, digest, mt.OCI_LAYER_ZSTD, BytesReadAt(blob), len(blob), keep_decoded=True
        )
        assert decoded_path(tmp_path, digest).exists() == kept
        assert (index.checkpoints == b"") == kept
        entry = index.by_path()["src/weights/model.bin"]
        with closing(index.open_reader()) as reader:
            assert isinstance(reader, DecodedReader) == kept
            assert read_entry(reader, entry, 0, entry.size) == model
        again = load_cached(tmp_path, digest, mt.OCI_LAYER_ZSTD, len(blob))
        assert again is not None and again.entries == index.entries


def test_a_truncated_zstd_layer_leaves_no_copy(tmp_path: Path) -> None:
    blob = zstandard.ZstdCompressor(level=3).compress(make_tar(MEMBERS))[:-100]
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with pytest.raises(CorruptLayer):
        load_or_build(
            tmp_path, digest, mt.OCI_LAYER_ZSTD, BytesReadAt(blob), len(blob), keep_decoded=True
        )
    assert not decoded_path(tmp_path, digest).exists()
    assert not _tmp_files(tmp_path)


def test_worth_keeping_is_half_of_the_cache() -> None:
    assert worth_keeping(10 * 2**30, 20 * 2**30)
    assert not worth_keeping(11 * 2**30, 20 * 2**30)
