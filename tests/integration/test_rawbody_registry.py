"""``registry._rawbody``: big blob bodies read past h11, against the real registry."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpcore
import httpx
import pytest

from r8imfs.oci.digest import sha256
from r8imfs.oci.reference import parse
from r8imfs.registry import _rawbody, upload
from r8imfs.registry._rawbody import body_chunks
from r8imfs.registry.client import RegistryClient
from tests.helpers.registry import RegistryServer
from tools.faultproxy import DropBody, FaultProxy

MiB = 1024 * 1024
DIRECT_MIN = 4 * MiB  # the tests' threshold: their bodies stay small
DATA = os.urandom(2 * DIRECT_MIN + 12345)


async def _push(registry: RegistryServer, repo_name: str) -> str:
    async def body() -> AsyncIterator[bytes]:
        yield DATA

    repo = parse(f"{registry.host}/{repo_name}").repository
    async with RegistryClient() as client:
        done = await upload.upload_stream(client, repo, body(), expected=sha256(DATA))
    return f"http://{registry.host}/v2/{repo_name}/blobs/{done.digest}"


async def _get(http: httpx.AsyncClient, url: str, start: int, end: int | None) -> bytes:
    headers = {"Range": f"bytes={start}-{'' if end is None else end - 1}"}
    response = await http.send(http.build_request("GET", url, headers=headers), stream=True)
    try:
        got = b"".join([c async for c in body_chunks(response, 30, DIRECT_MIN)])
        network = response.extensions["network_stream"]
        if len(got) >= DIRECT_MIN + MiB:  # past a first chunk of at most 1 MiB: read past h11
            # so the connection is closed, never reused
            with pytest.raises(httpcore.ReadError):
                await network.read(1)
    finally:
        await response.aclose()
    return got


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, None), (0, len(DATA)), (777, DIRECT_MIN * 2 + 5), (10, 1000), (5, DIRECT_MIN // 2)],
)
async def test_bodies_big_and_small_arrive_whole(
    registry: RegistryServer, repo_name: str, start: int, end: int | None
) -> None:
    url = await _push(registry, repo_name)
    async with httpx.AsyncClient() as http:
        for _ in range(2):  # a second request after each: a closed connection is not reused
            assert await _get(http, url, start, end) == DATA[start:end]


@pytest.mark.parametrize("after", [100, DIRECT_MIN + MiB + 1])
async def test_a_dropped_body_resumes_to_the_exact_bytes(
    registry: RegistryServer, repo_name: str, after: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropped in the first chunk (through h11) or in the direct reads."""
    monkeypatch.setattr(_rawbody, "DIRECT_MIN", DIRECT_MIN)
    await _push(registry, repo_name)
    with FaultProxy(registry.host) as proxy:
        proxy.set_faults([DropBody(after=after, times=1)])
        repo = parse(f"{proxy.host}/{repo_name}").repository
        async with RegistryClient() as client, client.open_blob(repo, sha256(DATA)) as stream:
            got = b"".join([c async for c in stream.chunks()])
    assert stream.resumes == 1
    assert got == DATA
