"""Putting blobs into a repository: HEAD first, then mount, then upload.

Order of preference for a blob the destination needs (distribution spec,
"Pushing blobs" and "Mounting a blob from another repository"):

1. ``HEAD`` on the destination: already there, nothing moves;
2. same registry: ``POST /blobs/uploads/?mount=<digest>&from=<repo>``:
   201 means mounted; 202 (ECR, unknown ``from``) or 401/404 (Harbor)
   mean "upload it yourself", so we fall back;
3. upload: ``POST`` for a session, then either one streamed ``PATCH``
   and a closing ``PUT ?digest=`` (monolithic, the default: it works on
   every registry) or ``PATCH`` chunks with ``Content-Range`` (``chunked``).

Bodies stream from an async iterator; the digest is computed on the way,
so nothing is held whole in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass

import httpx

from r8imfs._threads import run_io
from r8imfs.errors import DigestMismatch, RegistryError
from r8imfs.oci.digest import Hasher
from r8imfs.oci.reference import Repository
from r8imfs.registry.client import RegistryClient

CHUNK = 16 * 1024 * 1024
#: Chunks at least this big are hashed in a worker thread, off the trio loop.
THREAD_HASH_MIN = 256 * 1024
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Uploaded:
    digest: str
    size: int
    how: str  # "exists", "mounted", "uploaded"


async def blob_exists(client: RegistryClient, repo: Repository, digest: str) -> bool:
    return await client.head_blob(repo, digest) is not None


async def mount_blob(
    client: RegistryClient, repo: Repository, digest: str, source: Repository
) -> bool:
    """Try a cross-repository mount; False means "upload it yourself"."""
    if source.api_host != repo.api_host:
        return False
    response = await client.request(
        "POST",
        repo,
        f"/v2/{repo.name}/blobs/uploads/",
        params={"mount": digest, "from": source.name},
        what=f"mount of {digest} from {source.name}",
        ok=(201,),
        extra_ok=(202, 401, 403, 404),
    )
    if response.status_code == 202 and "location" in response.headers:
        # An upload session we will not use: close it so it does not linger.
        location = response.headers["location"]
        await _cancel(client, repo, location)
    return response.status_code == 201


async def _cancel(client: RegistryClient, repo: Repository, location: str) -> None:
    with contextlib.suppress(RegistryError):  # the registry reaps stale sessions itself
        await client.request(
            "DELETE", repo, _path(client, repo, location), what="upload cancel", ok=(204, 200, 404)
        )


def _path(client: RegistryClient, repo: Repository, location: str) -> str:
    """Upload locations may be absolute or relative; keep path and query."""
    url = httpx.URL(client.base_url(repo)).join(location)
    return url.raw_path.decode()


async def _start(client: RegistryClient, repo: Repository) -> str:
    response = await client.request(
        "POST",
        repo,
        f"/v2/{repo.name}/blobs/uploads/",
        what=f"upload to {repo}",
        ok=(202,),
    )
    if "location" not in response.headers:
        raise RegistryError(f"{repo.registry} started an upload but gave no Location")
    return response.headers["location"]


def _with_digest(path: str, digest: str) -> str:
    return f"{path}{'&' if '?' in path else '?'}digest={digest}"


async def upload_stream(
    client: RegistryClient,
    repo: Repository,
    body: AsyncIterable[bytes],
    *,
    expected: str | None = None,
    chunked: bool = False,
    progress: Progress | None = None,
) -> Uploaded:
    """Upload a stream as one blob; verify ``expected`` before committing."""
    location = _path(client, repo, await _start(client, repo))
    hasher = Hasher()

    async def hashed() -> AsyncIterator[bytes]:
        async for chunk in body:
            if len(chunk) >= THREAD_HASH_MIN:
                await run_io(hasher.update, chunk)
            else:
                hasher.update(chunk)
            if progress:
                progress(len(chunk))
            yield chunk

    if chunked:
        location = await _patch_chunks(client, repo, location, hashed())
    else:
        response = await client.request(
            "PATCH",
            repo,
            location,
            what=f"upload to {repo}",
            headers={"Content-Type": "application/octet-stream"},
            content=hashed(),
            ok=(202, 204),
        )
        location = _path(client, repo, response.headers.get("location", location))
    digest = hasher.digest
    if expected and digest != expected:
        await _cancel(client, repo, location)
        raise DigestMismatch(f"uploaded bytes hash to {digest}, expected {expected}")
    await client.request(
        "PUT", repo, _with_digest(location, digest), what=f"upload of {digest}", ok=(201, 204)
    )
    return Uploaded(digest, hasher.size, "uploaded")


async def _patch_chunks(
    client: RegistryClient, repo: Repository, location: str, body: AsyncIterator[bytes]
) -> str:
    offset = 0
    buf = bytearray()

    async def flush(data: bytes) -> str:
        nonlocal offset
        response = await client.request(
            "PATCH",
            repo,
            location,
            what=f"upload to {repo}",
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(data) - 1}",
            },
            content=data,
            ok=(202, 204),
        )
        offset += len(data)
        return _path(client, repo, response.headers.get("location", location))

    async for chunk in body:
        buf += chunk
        while len(buf) >= CHUNK:
            location = await flush(bytes(buf[:CHUNK]))
            del buf[:CHUNK]
    if buf:
        location = await flush(bytes(buf))
    return location


async def upload_bytes(client: RegistryClient, repo: Repository, data: bytes) -> Uploaded:
    """Small blobs (configs): HEAD, then a single POST+PUT with the body."""
    hasher = Hasher()
    hasher.update(data)
    if await blob_exists(client, repo, hasher.digest):
        return Uploaded(hasher.digest, len(data), "exists")
    location = _path(client, repo, await _start(client, repo))
    await client.request(
        "PUT",
        repo,
        _with_digest(location, hasher.digest),
        what=f"upload of {hasher.digest}",
        headers={"Content-Type": "application/octet-stream"},
        content=data,
        ok=(201, 204),
    )
    return Uploaded(hasher.digest, len(data), "uploaded")


async def ensure_blob(
    client: RegistryClient,
    repo: Repository,
    digest: str,
    sources: list[Repository],
    *,
    progress: Progress | None = None,
) -> Uploaded:
    """Make ``digest`` present in ``repo``, moving as few bytes as possible."""
    if await blob_exists(client, repo, digest):
        return Uploaded(digest, -1, "exists")
    for source in sources:
        if source != repo and await mount_blob(client, repo, digest, source):
            return Uploaded(digest, -1, "mounted")
    if not sources:
        raise RegistryError(f"blob {digest} is missing from {repo} and no source was given")
    # Across registries (or a registry that refuses mounts): stream it over.
    source = sources[0]
    async with client.open_blob(source, digest) as stream:
        return await upload_stream(
            client, repo, stream.chunks(), expected=digest, progress=progress
        )
