"""Upload replay (registry/upload.py) against httpx.MockTransport.

The fault-proxy tests (tests/reliability/test_long_transfers.py) run these
paths against the real registry; two answers that registry never gives are
pinned here: a 416 for a chunk it kept in part, and a lost commit answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager

import httpx

from r8imfs.oci.digest import sha256
from r8imfs.oci.reference import parse
from r8imfs.registry._http import RetryPolicy
from r8imfs.registry.client import ClientOptions, RegistryClient
from r8imfs.registry.upload import upload_stream

REPO = parse("127.0.0.1:1/a/b:t").repository
DATA = bytes(range(200))


class Registry:
    """Just enough of an upload API, with scripted failures."""

    def __init__(self, *, patch_statuses: list[int]) -> None:
        self.patch_statuses = patch_statuses
        self.received = bytearray()
        self.log: list[str] = []
        self.sessions = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.log.append(f"{method} {request.headers.get('content-range', '')}".strip())
        if method == "POST":
            self.sessions += 1
            self.received.clear()
            location = f"/v2/a/b/blobs/uploads/{self.sessions}"
            return httpx.Response(202, headers={"location": location})
        if method == "PATCH":
            body = request.read()
            status = self.patch_statuses.pop(0) if self.patch_statuses else 202
            if status == 416:  # it kept the first half of what it was sent
                self.received += body[: len(body) // 2]
                return httpx.Response(416)
            if status != 202:
                return httpx.Response(status, headers={"retry-after": "0"})
            self.received += body
            return httpx.Response(202, headers={"location": path})
        if method == "GET":
            return httpx.Response(204, headers={"range": f"0-{len(self.received) - 1}"})
        if method == "PUT":
            ok = request.url.params["digest"] == sha256(bytes(self.received))
            return httpx.Response(201 if ok else 400)
        return httpx.Response(404)


def client_for(registry: Registry) -> RegistryClient:
    options = ClientOptions(retry=RetryPolicy(attempts=4, base=0.001))
    return RegistryClient(options, transport=httpx.MockTransport(registry))


async def test_a_chunk_the_registry_kept_in_part_goes_on_from_its_offset() -> None:
    registry = Registry(patch_statuses=[416])
    async with client_for(registry) as client:

        async def body() -> AsyncIterator[bytes]:
            yield DATA

        up = await upload_stream(client, REPO, body(), chunked=True)
    assert up.digest == sha256(DATA)
    assert registry.log == ["POST", "PATCH 0-199", "GET", "PATCH 100-199", "PUT"]


async def test_a_streamed_patch_refused_is_replayed_in_a_new_session() -> None:
    registry = Registry(patch_statuses=[503])
    made = 0

    @asynccontextmanager
    async def body() -> AsyncIterator[AsyncIterable[bytes]]:
        nonlocal made
        made += 1

        async def once() -> AsyncIterator[bytes]:
            yield DATA

        yield once()

    async with client_for(registry) as client:
        up = await upload_stream(client, REPO, body)
    assert up.digest == sha256(DATA) and made == 2
    assert registry.sessions == 2
    assert registry.log[-2:] == ["PATCH 0-199", "PUT"]  # the replay goes in chunks
