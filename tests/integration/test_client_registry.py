"""Client paths not covered by the commands' tests: chunked uploads, refresh tokens."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import httpx

from r8imfs.oci.digest import sha256
from r8imfs.oci.reference import parse
from r8imfs.registry import upload
from r8imfs.registry.client import RegistryClient
from tests.helpers.images import cli, push
from tests.helpers.registry import TOKEN_SERVICE, RegistryServer


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_chunked_and_monolithic_uploads_round_trip(
    registry: RegistryServer, repo_name: str, monkeypatch: Any
) -> None:
    monkeypatch.setattr(upload, "CHUNK", 256 * 1024)
    repo = parse(f"{registry.host}/{repo_name}").repository
    data = os.urandom(1024 * 1024 + 17)
    async with RegistryClient() as client:
        for chunked in (True, False):
            done = await upload.upload_stream(
                client, repo, _chunks(data, 100_000), expected=sha256(data), chunked=chunked
            )
            assert (done.digest, done.size) == (sha256(data), len(data))
            assert await client.get_blob(repo, done.digest) == data
            async with client.open_blob(repo, done.digest, 1000, 5000) as stream:
                part = b"".join([c async for c in stream.chunks()])
            assert (stream.status, stream.start, part) == (206, 1000, data[1000:5000])


def test_refresh_token_from_docker_config(
    token_registry: RegistryServer, repo_name: str, docker_config: Any
) -> None:
    docker_config(token_registry)
    ref = f"{token_registry.host}/{repo_name}:v1"
    digest = push(ref)
    server = token_registry.token_server
    assert server is not None
    reply = httpx.post(
        server.realm,
        data={
            "grant_type": "password",
            "username": token_registry.username,
            "password": token_registry.password,
            "service": TOKEN_SERVICE,
            "client_id": "test",
            "access_type": "offline",
        },
    )
    refresh = reply.json()["refresh_token"]
    docker_config(token_registry.host, "", "", identitytoken=refresh)
    # only the refresh token is configured now: a password would be a different path
    server.requests.clear()
    proc = cli("layers", "--json", ref)
    assert proc.returncode == 0, proc.stderr
    assert digest in proc.stdout
    grants = [r.grant_type for r in server.requests]
    assert grants and set(grants) == {"refresh_token"}
    assert refresh not in proc.stdout + proc.stderr
