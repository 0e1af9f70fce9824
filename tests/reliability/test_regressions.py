"""The bugs this suite found, each pinned at the smallest scale (no registry, no mount).

See docs/reliability.md, "Bugs found", for the story of each.
"""

from __future__ import annotations

import gc
import io
import os
import tarfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import zstandard

from r8imfs.cache._ranges import BlockHasher, BlockTable
from r8imfs.cache.blobcache import BlobCache
from r8imfs.engine.codecs.decompress import ZstdInflater
from r8imfs.engine.readat import BlobFile, BytesReadAt
from r8imfs.engine.safetar import GuardedTarInfo, HostileTar, check_pax_records
from r8imfs.engine.tarindex import index_seekable
from r8imfs.errors import CorruptLayer, DigestMismatch, UnsupportedMediaType
from r8imfs.oci.manifest import parse
from r8imfs.oci.reference import Repository
from r8imfs.ops.extract import DirSink, TarSink
from tools.demoimage import tar_of

KiB = 1024
REPO = Repository("registry.test", "lib/blob")


# -- tarfile guards (CVE-2024-6232, CVE-2025-8194, unbounded headers) ---------------------


def _pax(records: bytes) -> bytes:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, len(records)
    head = info.tobuf(format=tarfile.USTAR_FORMAT) + records + b"\0" * (-len(records) % 512)
    return head + tar_of({"a": b"abc"})


def _names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|", tarinfo=GuardedTarInfo) as tf:
        return [m.name for m in tf]


@pytest.mark.parametrize(
    "records",
    [
        b"1" * 300_000,
        b"300016 comment=" + b"1" * 300_000 + b"\n",
        b"5 a=b\n",
        b"0 x=y\n",
        b"3 =\n",
        b"12 nokey\n\n\n\n",
    ],
    ids=["digits", "digit-value", "short-length", "zero-length", "empty-key", "no-equals"],
)
def test_pax_headers_the_stdlib_would_choke_on_are_refused_at_once(records: bytes) -> None:
    started = time.monotonic()
    with pytest.raises(HostileTar):
        _names(_pax(records))
    assert time.monotonic() - started < 1.0


def test_negative_sizes_do_not_loop() -> None:
    record = b"14 size=-1536\n"
    data = tar_of({"a": b"abc"})[:1024] + _pax(record)
    with pytest.raises(CorruptLayer, match="negative size"):
        index_seekable(BlobFile(BytesReadAt(data)), len(data))


def test_ordinary_pax_long_names_and_xattrs_parse_as_the_stdlib_does() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("d" * 300 + "/é" * 10)
        info.pax_headers = {"SCHILY.xattr.user.k": "v", "mtime": "1700000000.5"}
        tf.addfile(info)
    gnu = io.BytesIO()
    with tarfile.open(fileobj=gnu, mode="w", format=tarfile.GNU_FORMAT) as tf:
        tf.addfile(tarfile.TarInfo("g" * 200))
    for data in (buf.getvalue(), gnu.getvalue()):
        with tarfile.open(fileobj=io.BytesIO(data)) as plain:
            expected = [(m.name, m.mtime, m.pax_headers) for m in plain]
        with tarfile.open(fileobj=io.BytesIO(data), tarinfo=GuardedTarInfo) as guarded:
            assert [(m.name, m.mtime, m.pax_headers) for m in guarded] == expected
    check_pax_records(b"")


# -- a zstd stream cut inside a frame -----------------------------------------------------


def test_a_zstd_stream_cut_inside_a_frame_is_corrupt() -> None:
    frames = [zstandard.ZstdCompressor().compress(os.urandom(50_000)) for _ in range(3)]
    skippable = (0x184D2A5E).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
    whole = frames[0] + skippable + frames[1] + frames[2]
    assert len(ZstdInflater(io.BytesIO(whole)).read()) == 150_000
    cut = ZstdInflater(io.BytesIO(whole[:-100]))
    with pytest.raises(CorruptLayer, match="truncated"):
        cut.read()


# -- manifests: digests go into URLs and paths --------------------------------------------


@pytest.mark.parametrize(
    "layer",
    [
        '{"digest": "../../x", "size": 1}',
        '{"digest": "sha256:abc", "size": 1}',
        '{"digest": "sha256:' + "a" * 64 + '", "size": -1}',
        '{"digest": "sha256:' + "a" * 64 + '", "size": "12"}',
    ],
)
def test_descriptors_with_impossible_digests_or_sizes(layer: str) -> None:
    raw = (
        '{"mediaType": "application/vnd.oci.image.manifest.v1+json", "config": '
        f'{{"digest": "sha256:{"b" * 64}", "size": 2}}, "layers": [{layer}]}}'
    ).encode()
    with pytest.raises(UnsupportedMediaType, match="malformed"):
        parse(raw)


# -- extract sinks --------------------------------------------------------------------------


class _Breaks(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        raise CorruptLayer("the layer broke mid-file")


def test_dir_sink_leaves_no_half_written_file(tmp_path: Path) -> None:
    sink = DirSink(tmp_path / "out")
    info = tarfile.TarInfo("w.bin")
    with pytest.raises(CorruptLayer):
        sink.add("w.bin", info, _Breaks())  # type: ignore[arg-type]
    sink.abort()
    assert list((tmp_path / "out").iterdir()) == []


def test_a_discarded_tar_sink_writes_nothing_later(tmp_path: Path) -> None:
    path = tmp_path / "w.tar"
    with path.open("wb") as out:
        sink = TarSink(out)
        info = tarfile.TarInfo("a")
        info.size = 3
        sink.add("a", info, io.BytesIO(b"abc"))
        sink.discard()
        out.flush()
        before = path.read_bytes()
        sink.add("b", info, io.BytesIO(b"def"))  # after discard: into the void
        sink.close()
    del sink
    gc.collect()  # tarfile's __del__ used to write its buffer into the closed file here
    assert path.read_bytes() == before
    assert b"def" not in before
    piped = io.BytesIO()
    TarSink(piped).discard(poison=True)
    assert piped.getvalue().startswith(b"r8imfs: extract failed")


# -- the blob cache: block tables, and a fresh cache directory opened twice at once ---------


class _Stream:
    def __init__(self, body: bytes, start: int) -> None:
        self.start = start
        self.status = 206
        self.total: int | None = None
        self._body = body

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._body


class _Client:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.corrupt_at: int | None = None

    @asynccontextmanager
    async def open_blob(
        self, repo: Repository, digest: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[_Stream]:
        body = bytearray(self.data[start : len(self.data) if end is None else end])
        if self.corrupt_at is not None and start <= self.corrupt_at < start + len(body):
            body[self.corrupt_at - start] ^= 0xFF
        yield _Stream(bytes(body), start)


def _glob(root: Path, pattern: str) -> list[Path]:
    return list(root.glob(pattern))


def _digest(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_blocks_fetched_after_eviction_must_match_the_verified_copy(tmp_path: Path) -> None:
    data = os.urandom(200 * KiB)
    client, digest = _Client(data), _digest(data)
    async with BlobCache(tmp_path, block_size=64 * KiB) as cache:
        reader = await cache.open(client, REPO, digest, len(data))
        assert await reader.read(0, len(data)) == data
        assert reader.verified
        await reader.aclose()
        await cache.evict()
    assert _glob(tmp_path, "blobs/sha256/*.blocks")
    async with BlobCache(tmp_path, max_bytes=0, block_size=64 * KiB) as cache:
        assert not _glob(tmp_path, "blobs/sha256/*.data")  # evicted on open
        client.corrupt_at = 100 * KiB
        reader = await cache.open(client, REPO, digest, len(data))
        assert await reader.read(0, 1000) == data[:1000]  # block 0 is fine
        with pytest.raises(DigestMismatch, match="unlike the copy verified before"):
            await reader.read(100 * KiB, 10)
        client.corrupt_at = None  # not poisoned: a good copy later is served
        assert await reader.read(100 * KiB, 10) == data[100 * KiB : 100 * KiB + 10]
        await reader.aclose()


def test_block_tables_are_decoded_strictly() -> None:
    hasher = BlockHasher(4)
    hasher.update(b"0123456789")
    table = BlockTable("sha256:" + "a" * 64, 10, 4, hasher.hashes())
    assert len(table.hashes) == 3
    raw = table.encode()
    assert BlockTable.decode(raw, table.digest, 10, 4) == table
    assert BlockTable.decode(raw, table.digest, 10, 8) is None
    assert BlockTable.decode(raw, table.digest, 11, 4) is None
    assert BlockTable.decode(b"{garbage", table.digest, 10, 4) is None


async def test_layers_opened_at_once_in_a_fresh_cache_directory(tmp_path: Path) -> None:
    blobs = [os.urandom(10 * KiB) for _ in range(8)]
    root = tmp_path / "does" / "not" / "exist"
    async with BlobCache(root) as cache, trio.open_nursery() as nursery:
        for data in blobs:  # each open creates the root if it is missing
            nursery.start_soon(_read_all, cache, data)


async def _read_all(cache: BlobCache, data: bytes) -> None:
    reader = await cache.open(_Client(data), REPO, _digest(data), len(data))
    try:
        assert await reader.read(0, len(data)) == data
    finally:
        await reader.aclose()
