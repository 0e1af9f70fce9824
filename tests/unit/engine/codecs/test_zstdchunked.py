"""zstd:chunked written by ``write_chunked``, checked by an independent reader
(tests/helpers/zstdchunked_spec.py), by the zstd CLI, and read back through ``toc``."""

from __future__ import annotations

import hashlib
import io
import itertools
import random
import shutil
import struct
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import zstandard

from r8imfs.engine.codecs import tocformat as tf
from r8imfs.engine.codecs.chunkedwrite import _parse_plain, crc64
from r8imfs.engine.codecs.toc import load_toc
from r8imfs.engine.codecs.tocread import TocReader, open_toc_reader
from r8imfs.engine.codecs.zstdindex import build_zstd_index, read_seek_table
from r8imfs.engine.codecs.zstdwrite import SeekableResult, write_chunked
from r8imfs.engine.entry import normalise_path
from r8imfs.engine.readat import BytesReadAt, CountingReadAt, read_entry
from r8imfs.engine.tarindex import index_seekable
from tests.helpers.tars import M, make_tar, payload
from tests.helpers.zstdchunked_spec import check_blob, crc64_iso

KiB = 1024
FRAME = 64 * KiB


def members() -> list[M]:
    return [
        M("d", "./etc/"),
        M("f", "./etc/hostname", b"box\n"),
        M("f", "./etc/empty"),
        M("f", "usr/lib/big.bin", payload(5 * FRAME + 123, seed=1)),  # six chunks
        M("f", "usr/lib/exact.bin", payload(FRAME, seed=2)),  # exactly one chunk
        M("l", "usr/lib/link", link="big.bin"),
        M("h", "usr/lib/hard", link="usr/lib/exact.bin"),
        M("c", "dev/null", major=1, minor=3),
        M("p", "run/fifo"),
        M("f", "x/" + "long-name-" * 20 + ".txt", b"a long PAX path\n"),
        M("f", "x/ünïcode", b"utf-8 name\n", pax={"SCHILY.xattr.user.k": "v"}),
        M("f", "x/sparse-ish", bytes(3 * FRAME)),  # zeros, still data chunks
    ]


def chunked(data: bytes, frame: int = FRAME) -> tuple[bytes, SeekableResult]:
    out = io.BytesIO()
    result = write_chunked(io.BytesIO(data), out, frame_size=frame, threads=2)
    return out.getvalue(), result


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_output_passes_the_independent_reader(fmt: int) -> None:
    tar = make_tar(members(), fmt)
    blob, result = chunked(tar)
    assert result.diff_id == _sha(tar)
    assert result.compressed_size == len(blob)
    toc = check_blob(blob, result.annotations, result.diff_id)
    names = [e["name"] for e in toc["entries"] if e["type"] != "chunk"]
    assert names[0] == "./etc/" and "./etc/hostname" in names
    big = next(e for e in toc["entries"] if e["name"] == "usr/lib/big.bin")
    assert big["chunkSize"] == FRAME and big["offset"] < big["endOffset"]
    assert sum(1 for e in toc["entries"] if e["type"] == "chunk" and e["name"] == big["name"]) == 5
    exact = next(e for e in toc["entries"] if e["name"] == "usr/lib/exact.bin")
    assert "chunkSize" not in exact  # one chunk: no chunk fields (c/storage layout)
    hard = next(e for e in toc["entries"] if e["name"] == "usr/lib/hard")
    assert hard["type"] == "hardlink" and hard["linkName"] == "usr/lib/exact.bin"
    uni = next(e for e in toc["entries"] if e["name"] == "x/ünïcode")
    if fmt == tarfile.PAX_FORMAT:  # GNU tars carry no PAX records
        assert uni["xattrs"] == {"user.k": "dg=="}


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd CLI not installed")
def test_zstd_cli_decodes_to_the_tar(tmp_path: Path) -> None:
    tar = make_tar(members())
    blob, _ = chunked(tar)
    path = tmp_path / "layer.zst"
    path.write_bytes(blob)
    out = subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    assert out == tar


def test_seek_table_still_serves_the_plain_seekable_reader() -> None:
    tar = make_tar(members())
    blob, _ = chunked(tar)
    index = build_zstd_index(BytesReadAt(blob))
    assert index.frames.seekable
    assert index.uncompressed_size == len(tar)
    plain = index_seekable(io.BytesIO(tar), len(tar))
    assert [(e.path, e.data_offset) for e in index.entries] == [
        (e.path, e.data_offset) for e in plain
    ]


def test_not_a_tar_gives_plain_seekable_zstd_without_annotations() -> None:
    data = payload(3 * FRAME + 5, seed=9)
    blob, result = chunked(data)
    assert result.annotations == {}
    assert tf.MANIFEST_CHECKSUM.encode() not in blob
    assert result.diff_id == _sha(data)
    table = read_seek_table(BytesReadAt(blob))  # still a seekable zstd blob
    assert table is not None and table.uncompressed_size == len(data)


def test_empty_input_still_starts_with_a_zstd_frame() -> None:
    blob, result = chunked(b"")
    assert blob[:4] == b"\x28\xb5\x2f\xfd"
    assert result.uncompressed_size == 0


def test_crc64_matches_the_reference() -> None:
    data = payload(10_000, seed=3)
    assert crc64(data).to_bytes(8, "big") == crc64_iso(data)
    assert crc64(data[5000:], crc64(data[:5000])) == crc64(data)
    assert crc64_iso(b"123456789").hex() == "b90956c775a41001"  # CRC-64/GO-ISO check value


def test_toc_reads_back_as_the_tar_index_does() -> None:
    tar = make_tar(members())
    blob, result = chunked(tar)
    reads = CountingReadAt(BytesReadAt(blob))
    index = load_toc(reads, result.annotations)
    assert index is not None and index.kind == "zstd:chunked"
    assert reads.calls == 1 and reads.bytes_read < len(blob) // 10  # the TOC alone
    plain = index_seekable(io.BytesIO(tar), len(tar))
    fields = ("path", "kind", "mode", "uid", "gid", "mtime", "size", "linkname", "xattrs")
    assert [tuple(getattr(e, f) for f in fields) for e in index.entries] == [
        tuple(getattr(e, f) for f in fields) for e in plain
    ]
    bodies = tar_bodies(tar)
    with TocReader(reads, index) as reader:
        for e in index.entries:
            if e.kind == "file":
                want = bodies[e.path]
                assert read_entry(reader, e, 0, e.size) == want, e.path
                assert read_entry(reader, e, 7, 3 * KiB) == want[7 : 7 + 3 * KiB]


def tar_bodies(tar: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        for m in t:
            f = t.extractfile(m) if m.isreg() else None
            if f is not None:
                out[normalise_path(m.name)] = f.read()
    return out


def test_a_read_fetches_only_the_chunks_it_needs() -> None:
    tar = make_tar(members())
    blob, result = chunked(tar)
    reads = CountingReadAt(BytesReadAt(blob))
    index = load_toc(reads, result.annotations)
    assert index is not None
    big = next(f for f in index.files if f.path == "usr/lib/big.bin")
    before = reads.bytes_read
    with TocReader(reads, index) as reader:
        assert (
            reader.read_file(big, 2 * FRAME + 10, 100)
            == payload(5 * FRAME + 123, 1)[2 * FRAME + 10 : 2 * FRAME + 110]
        )
        assert reader.chunks_verified == 1
        chunk = big.chunks[2]
        assert reads.bytes_read - before == chunk.cend - chunk.cstart
        reader.read_file(big, 2 * FRAME + 200, 100)  # same chunk: from the cache
        assert reader.chunks_verified == 1
        assert reader.cached(big.start + 2 * FRAME, 50) is not None
        assert reader.read_file(big, 0, big.size) == payload(5 * FRAME + 123, 1)
        assert reader.chunks_verified == 6  # the others, decoded on the pool


@pytest.mark.parametrize("case", ["unknown member type", "body cut short"])
def test_what_the_toc_cannot_describe_gets_no_toc(case: str) -> None:
    if case == "unknown member type":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
            t.addfile(tarfile.TarInfo("a"), io.BytesIO())
            odd = tarfile.TarInfo("volume")
            odd.type = b"V"  # a GNU volume header: no TOC type for it
            t.addfile(odd)
            info = tarfile.TarInfo("b")
            info.size = 3 * FRAME
            t.addfile(info, io.BytesIO(payload(3 * FRAME, seed=5)))
        tar = buf.getvalue()
    else:
        tar = make_tar(members())[: 2 * FRAME]  # ends inside usr/lib/big.bin
    blob, result = chunked(tar)
    assert result.annotations == {}
    assert result.diff_id == _sha(tar)
    table = read_seek_table(BytesReadAt(blob))
    assert table is not None and table.uncompressed_size == len(tar)
    reader = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True)
    assert reader.read() == tar


def test_concurrent_reads_agree_with_the_tar() -> None:
    tar = make_tar(members())
    blob, result = chunked(tar)
    reader = open_toc_reader(BytesReadAt(blob), result.annotations)
    assert reader is not None
    bodies = tar_bodies(tar)
    files = [e for e in reader.index.entries if e.kind == "file" and e.size]
    errors: list[str] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(200):
            e = rng.choice(files)
            at = rng.randrange(e.size)
            n = rng.randrange(1, 3 * FRAME)
            if read_entry(reader, e, at, n) != bodies[e.path][at : at + n]:
                errors.append(f"{e.path} {at}+{n}")

    with reader, ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    assert errors == []
    assert open_toc_reader(BytesReadAt(blob), {}) is None  # no TOC announced


def safetensors(header_len: int, data_len: int, seed: int = 4) -> bytes:
    """A ``.safetensors``-shaped body: u64 LE header length, JSON padded to it, data."""
    text = b'{"w":{"dtype":"F16","shape":[%d],"data_offsets":[0,%d]}}' % (data_len // 2, data_len)
    return struct.pack("<Q", header_len) + text.ljust(header_len) + payload(data_len, seed=seed)


def chunk_sizes(toc: dict[str, Any], name: str) -> list[int]:
    return [e.get("chunkSize", e.get("size", 0)) for e in toc["entries"] if e["name"] == name]


@pytest.mark.parametrize(
    ("header", "data", "first"),
    [
        (1000, 3 * FRAME, 1008),  # the first chunk is the header, then the FRAME grid
        (100, 1000, 108),  # a file smaller than one chunk still gets two
        (FRAME + 500, FRAME, FRAME),  # a header longer than a chunk: cut at FRAME, then 8 + N
    ],
)
def test_a_safetensors_header_is_its_own_first_chunk(header: int, data: int, first: int) -> None:
    body = safetensors(header, data)
    tar = make_tar([M("f", "w/model.safetensors", body), M("f", "w/x.bin", body)])
    blob, result = chunked(tar)
    toc = check_blob(blob, result.annotations, result.diff_id)  # c/storage's own checks
    sizes = chunk_sizes(toc, "w/model.safetensors")
    assert sizes[0] == first and sum(sizes) == len(body)
    assert 8 + header in itertools.accumulate(sizes)  # a boundary right after the header
    assert all(size <= FRAME for size in sizes)
    ends = set(itertools.accumulate(sizes))
    assert ends - {8 + header, len(body)} == set(range(FRAME, len(body), FRAME))  # the grid
    assert chunk_sizes(toc, "w/x.bin")[0] == min(FRAME, len(body))  # not by content: by name
    index = load_toc(BytesReadAt(blob), result.annotations)
    assert index is not None
    with TocReader(BytesReadAt(blob), index) as reader:
        model = next(f for f in index.files if f.path == "w/model.safetensors")
        assert reader.read_file(model, 0, 8 + header) == body[: 8 + header]
        assert reader.chunks_verified == (1 if first == 8 + header else 2)


@pytest.mark.parametrize("length", [10**9, 2**64 - 1, 101 * 1024 * 1024])
def test_a_safetensors_length_that_does_not_fit_is_ignored(length: int) -> None:
    body = struct.pack("<Q", length) + payload(3 * FRAME, seed=6)
    tar = make_tar([M("f", "model.safetensors", body)])
    blob, result = chunked(tar)
    toc = check_blob(blob, result.annotations, result.diff_id)
    assert chunk_sizes(toc, "model.safetensors") == [FRAME, FRAME, FRAME, 8]


def test_the_plain_header_parser_agrees_with_tarfile() -> None:
    """``_parse_plain`` answers as ``TarInfo.frombuf`` does, or leaves it to it."""
    attrs = "name mode uid gid size mtime chksum type linkname uname gname devmajor devminor"
    blocks = []
    ustar = [M("d", "./etc/"), M("f", "p/" + "q" * 120 + "/r.txt", b"1")]  # a prefix field
    for tar in (
        make_tar(members(), tarfile.PAX_FORMAT),
        make_tar(members(), tarfile.GNU_FORMAT),
        make_tar(ustar, tarfile.USTAR_FORMAT),
    ):
        blocks += [tar[i : i + 512] for i in range(0, len(tar), 512)]
    v7_dir = tarfile.TarInfo("olddir/")
    v7_dir.type = tarfile.AREGTYPE
    big_uid = tarfile.TarInfo("big")
    big_uid.uid = 8**8  # base-256 in a GNU header
    blocks += [v7_dir.tobuf(tarfile.USTAR_FORMAT), big_uid.tobuf(tarfile.GNU_FORMAT)]
    rng = random.Random(1)
    for _ in range(3000):  # damaged headers, most with a checksum that matches again
        b = bytearray(blocks[0])
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(512)] = rng.choice([0, 32, 48, 55, 56, 128, 255, rng.randrange(256)])
        if rng.random() < 0.8:
            b[148:156] = b" " * 8
            b[148:156] = b"%06o\0 " % sum(b)
        blocks.append(bytes(b))
    fast = 0
    for block in blocks:
        if not block.strip(b"\0"):
            continue
        mine = _parse_plain(block)
        try:
            ref = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            assert mine is None
            continue
        if mine is not None:
            fast += 1
            assert [getattr(mine, a) for a in attrs.split()] == [
                getattr(ref, a) for a in attrs.split()
            ]
    assert fast > 2000


def test_a_model_files_first_mib_is_cut_finer_then_the_grid_resumes() -> None:
    """With 2 MiB chunks, the head of a .safetensors body is cut every 256 KiB up
    to 1 MiB: a first touch that reads 512 KiB around the header fetches that."""
    frame, head = 2 * 1024 * 1024, 256 * 1024
    body = safetensors(1000, 5 * 1024 * 1024)
    blob, result = chunked(make_tar([M("f", "m.safetensors", body)]), frame)
    toc = check_blob(blob, result.annotations, result.diff_id)
    ends = list(itertools.accumulate(chunk_sizes(toc, "m.safetensors")))
    assert ends == [1008, head, 2 * head, 3 * head, 4 * head, frame, 2 * frame, len(body)]
