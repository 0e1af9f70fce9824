"""The blob cache against a real registry (docker-registry on loopback)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from r8imfs import _threads
from r8imfs.cache.blobcache import BlobCache
from r8imfs.engine.readat import BlobFile
from r8imfs.oci.reference import Repository
from r8imfs.registry.client import RegistryClient
from r8imfs.registry.upload import upload_stream
from tests.helpers.loopback import RecordedRequest
from tests.helpers.registry import RegistryServer
from tools.faultproxy import FaultProxy

KiB = 1024
MiB = 1024 * KiB
BLOCK = 256 * KiB


def pseudo_random(n: int) -> bytes:
    out = bytearray()
    seed = hashlib.sha256(b"r8imfs blob cache").digest()
    while len(out) < n:
        seed = hashlib.sha256(seed).digest()
        out += seed * 32  # 1 KiB per round: cheap, not compressible by accident
    return bytes(out[:n])


async def push(client: RegistryClient, repo: Repository, data: bytes) -> str:
    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(data), MiB):
            yield data[i : i + MiB]

    return (await upload_stream(client, repo, body())).digest


async def test_ranges_sequential_reads_and_verification(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    data = pseudo_random(3 * MiB + 12345)
    repo = Repository(registry.host, repo_name)
    async with RegistryClient() as client:
        digest = await push(client, repo, data)
        async with (
            BlobCache(tmp_path, 1 << 30, block_size=BLOCK) as cache,
            cache.reader(client, repo, digest, len(data)) as reader,
        ):
            for offset, size in [(0, 100), (MiB, 300 * KiB), (len(data) - 10, 100), (BLOCK - 1, 2)]:
                assert await reader.read(offset, size) == data[offset : offset + size]
            assert not reader.verified
            pos = 0
            while pos < len(data):
                assert await reader.read(pos, 64 * KiB) == data[pos : pos + 64 * KiB]
                pos += 64 * KiB
            assert reader.verified
            assert reader.bytes_fetched == len(data)  # every block exactly once
            assert reader.requests == -(-len(data) // BLOCK)


async def test_tarfile_in_a_worker_thread_reads_through_the_cache(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(20):
            content = pseudo_random(100 * KiB + i)
            info = tarfile.TarInfo(f"dir/file{i:02d}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    data = buf.getvalue()
    repo = Repository(registry.host, repo_name)
    async with RegistryClient() as client:
        digest = await push(client, repo, data)
        async with (
            BlobCache(tmp_path, 1 << 30, block_size=BLOCK) as cache,
            cache.reader(client, repo, digest, len(data)) as reader,
        ):
            readat = reader.sync_file()

            def list_members() -> list[str]:
                with tarfile.open(fileobj=BlobFile(readat), mode="r:") as tar:
                    return tar.getnames()

            names = await _threads.run_sync(list_members)
    assert names == [f"dir/file{i:02d}" for i in range(20)]


@pytest.fixture
def range_stripper(registry: RegistryServer) -> Iterator[tuple[str, list[RecordedRequest]]]:
    """The proxy, dropping ``Range`` before forwarding: 200 to every ranged GET."""
    seen: list[RecordedRequest] = []

    def strip_range(h: BaseHTTPRequestHandler) -> bool:
        headers = {name.lower(): value for name, value in h.headers.items()}
        seen.append(RecordedRequest(h.command, h.path, headers))
        del h.headers["Range"]
        return False  # forward it, Range gone

    front = FaultProxy(registry.host)
    front.local = strip_range
    with front:
        yield front.host, seen


async def test_registry_answering_200_to_a_range(
    registry: RegistryServer,
    repo_name: str,
    tmp_path: Path,
    range_stripper: tuple[str, list[RecordedRequest]],
) -> None:
    front, seen = range_stripper
    data = pseudo_random(2 * MiB + 999)
    async with RegistryClient() as client:
        digest = await push(client, Repository(registry.host, repo_name), data)
        repo = Repository(front, repo_name)
        async with (
            BlobCache(tmp_path, 1 << 30, block_size=BLOCK) as cache,
            cache.reader(client, repo, digest, len(data)) as reader,
        ):
            assert await reader.read(MiB + 5, 1000) == data[MiB + 5 : MiB + 1005]
            assert reader.verified  # the whole blob came, hashed on the way
            assert await reader.read(0, len(data)) == data
            assert reader.bytes_fetched == len(data)
    blob_gets = [r for r in seen if r.method == "GET" and "/blobs/" in r.path]
    assert len(blob_gets) == 1
    assert blob_gets[0].headers.get("range", "").startswith(f"bytes={4 * BLOCK}-")
