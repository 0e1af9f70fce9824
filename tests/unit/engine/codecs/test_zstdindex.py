from __future__ import annotations

import hashlib
import io
import random
import shutil
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import pyzstd
import zstandard

from r8imfs.engine.codecs.zstdindex import (
    FrameTable,
    ZstdLayerReader,
    build_zstd_index,
    read_seek_table,
)
from r8imfs.engine.codecs.zstdwrite import SeekableResult, seek_table_frame, write_seekable
from r8imfs.engine.readat import BlobFile, BytesReadAt, CountingReadAt
from r8imfs.engine.tarindex import index_seekable
from r8imfs.errors import CorruptLayer
from tests.helpers.tars import M, MiB, big_tar, make_tar

zstd_cli = pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd CLI not installed")
FRAME = 256 * 1024


@pytest.fixture(scope="module")
def tar() -> bytes:
    return big_tar(4 * MiB, seed=5)


def _seekable(tar: bytes, **kw: Any) -> tuple[bytes, SeekableResult]:
    out = io.BytesIO()
    result = write_seekable(io.BytesIO(tar), out, frame_size=kw.pop("frame_size", FRAME), **kw)
    return out.getvalue(), result


def _check_reads(reader: ZstdLayerReader, tar: bytes, n: int = 120, seed: int = 1) -> None:
    rng = random.Random(seed)
    cases = [(0, 10), (len(tar) - 1, 1), (len(tar) - 300, 300), (len(tar), 5)]
    cases += [(rng.randrange(len(tar)), rng.choice([1, 512, 70_000, 600_000])) for _ in range(n)]
    for off, size in cases:
        assert reader.pread(off, size) == tar[off : off + size], (off, size)


@pytest.mark.parametrize("threads", [1, 3])
def test_write_seekable_result_and_table(tar: bytes, threads: int) -> None:
    blob, result = _seekable(tar, threads=threads)
    assert result.compressed_size == len(blob)
    assert result.compressed_digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert result.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    table = read_seek_table(BytesReadAt(blob))
    assert table is not None
    assert table.seekable
    assert len(table.cstarts) == result.frames == -(-len(tar) // FRAME)
    assert table.uncompressed_size == len(tar)
    assert pyzstd.decompress(blob) == tar


def test_seek_table_is_read_from_the_tail_only(tar: bytes) -> None:
    blob, _ = _seekable(tar)
    counting = CountingReadAt(BytesReadAt(blob))
    table = read_seek_table(counting)
    assert table is not None
    assert counting.bytes_read == 9 + 8 + 12 * len(table.cstarts)


@zstd_cli
def test_zstd_cli_decodes_our_output(tar: bytes, tmp_path: Path) -> None:
    blob, _ = _seekable(tar, level=5)
    (tmp_path / "l.zst").write_bytes(blob)
    out = subprocess.run(["zstd", "-dc", str(tmp_path / "l.zst")], capture_output=True, check=True)
    assert out.stdout == tar


def test_seekable_index_and_reads(tar: bytes) -> None:
    blob, _ = _seekable(tar)
    counting = CountingReadAt(BytesReadAt(blob))
    index = build_zstd_index(counting)
    assert index.frames.seekable
    assert index.uncompressed_size == len(tar)
    assert index.entries == index_seekable(BlobFile(BytesReadAt(tar)), len(tar))
    with ZstdLayerReader(BytesReadAt(blob), index.frames.to_bytes()) as reader:
        _check_reads(reader, tar)


def test_seekable_index_skips_frames_without_headers() -> None:
    # two 3 MiB files in 256 KiB frames: only frames holding headers are decoded
    rng = random.Random(0)
    data = make_tar([M("f", "a", rng.randbytes(3 * MiB)), M("f", "b", rng.randbytes(3 * MiB))])
    blob, _ = _seekable(data)
    counting = CountingReadAt(BytesReadAt(blob))
    index = build_zstd_index(counting)
    assert [e.path for e in index.entries] == ["a", "b"]
    assert counting.bytes_read < len(blob) / 2


def test_empty_input_makes_a_valid_layer() -> None:
    blob, result = _seekable(b"")
    assert result.frames == 1
    assert result.uncompressed_size == 0
    assert pyzstd.decompress(blob) == b""
    index = build_zstd_index(BytesReadAt(blob))
    assert index.entries == []
    assert index.uncompressed_size == 0


def test_pyzstd_seekable_file(tar: bytes, tmp_path: Path) -> None:
    path = tmp_path / "py.zst"
    with pyzstd.SeekableZstdFile(path, "w", max_frame_content_size=300_000) as f:
        f.write(tar)
    blob = path.read_bytes()
    index = build_zstd_index(BytesReadAt(blob))
    assert index.frames.seekable
    assert len(index.frames.cstarts) > 5
    with ZstdLayerReader(BytesReadAt(blob), index.frames) as reader:
        _check_reads(reader, tar, n=60)


@zstd_cli
def test_plain_single_frame_from_cli(tar: bytes, tmp_path: Path) -> None:
    (tmp_path / "l.tar").write_bytes(tar)
    subprocess.run(["zstd", "-q", "-3", str(tmp_path / "l.tar")], check=True)
    blob = (tmp_path / "l.tar.zst").read_bytes()
    index = build_zstd_index(BytesReadAt(blob))
    assert not index.frames.seekable
    assert index.frames.cstarts == (0,)
    assert index.entries == index_seekable(BlobFile(BytesReadAt(tar)), len(tar))
    with ZstdLayerReader(BytesReadAt(blob), index.frames) as reader:
        _check_reads(reader, tar, n=30)


def _frames(tar: bytes, size: int, level: int = 3) -> list[bytes]:
    cctx = zstandard.ZstdCompressor(level=level)
    return [cctx.compress(tar[i : i + size]) for i in range(0, len(tar), size)]


def test_plain_multi_frame_with_skippable_frames(tar: bytes) -> None:
    frames = _frames(tar, 700 * 1024)
    skippable = struct.pack("<II", 0x184D2A53, 11) + b"TOC-ish!!!!"
    blob = frames[0] + skippable + b"".join(frames[1:]) + skippable
    index = build_zstd_index(BytesReadAt(blob))
    assert not index.frames.seekable
    assert index.uncompressed_size == len(tar)
    # restart points at frame starts, at least MIN_RESTART_SPACING (1 MiB) apart
    starts = list(index.frames.ustarts)
    assert starts[0] == 0
    assert len(starts) >= 3
    assert all(b - a >= MiB for a, b in zip(starts, starts[1:], strict=False))
    assert all(u % (700 * 1024) == 0 for u in starts)
    with ZstdLayerReader(BytesReadAt(blob), index.frames) as reader:
        _check_reads(reader, tar)


def test_parallel_reads(tar: bytes) -> None:
    blob = b"".join(_frames(tar, 300 * 1024))
    index = build_zstd_index(BytesReadAt(blob))
    errors: list[BaseException] = []
    with ZstdLayerReader(BytesReadAt(blob), index.frames) as reader:

        def work(seed: int) -> None:
            try:
                _check_reads(reader, tar, n=40, seed=seed)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors


def test_frame_table_round_trip() -> None:
    table = FrameTable((0, 100, 250), (0, MiB, 3 * MiB), 4 * MiB, seekable=True)
    assert FrameTable.from_bytes(table.to_bytes()) == table
    assert [table.locate(x) for x in (0, MiB - 1, MiB, 5 * MiB)] == [0, 0, 1, 2]
    with pytest.raises(CorruptLayer):
        FrameTable.from_bytes(b"garbage")
    with pytest.raises(CorruptLayer):
        FrameTable.from_bytes(table.to_bytes()[:-3])


def test_seek_table_that_does_not_fit_is_ignored(tar: bytes) -> None:
    frames = _frames(tar, FRAME)
    lying = seek_table_frame([(len(f) + 1, FRAME, 0) for f in frames])
    blob = b"".join(frames) + lying
    assert read_seek_table(BytesReadAt(blob)) is None
    index = build_zstd_index(BytesReadAt(blob))  # falls back to a plain scan
    assert index.uncompressed_size == len(tar)
    assert not index.frames.seekable


def test_corrupt_and_truncated_streams(tar: bytes) -> None:
    blob = b"".join(_frames(tar, MiB))
    with pytest.raises(CorruptLayer, match="ends inside"):
        build_zstd_index(BytesReadAt(blob[: len(blob) // 2]))
    bad = bytearray(blob)
    bad[len(bad) // 2 : len(bad) // 2 + 200] = bytes(200)
    with pytest.raises(CorruptLayer):
        build_zstd_index(BytesReadAt(bytes(bad)))
    with pytest.raises(CorruptLayer, match="no zstd frame"):
        build_zstd_index(BytesReadAt(b"\x1f\x8b" + bytes(100)))


def test_reader_detects_corruption_after_indexing(tar: bytes) -> None:
    blob, _ = _seekable(tar)
    index = build_zstd_index(BytesReadAt(blob))
    bad = bytearray(blob)
    mid = index.frames.cstarts[len(index.frames.cstarts) // 2]
    bad[mid + 50 : mid + 250] = bytes(200)
    with (
        ZstdLayerReader(BytesReadAt(bytes(bad)), index.frames) as reader,
        pytest.raises(CorruptLayer),
    ):
        reader.pread(index.frames.ustarts[len(index.frames.cstarts) // 2], 100_000)
