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

Replay: every request of a push is retried by the client, except a PATCH
with a streamed body, which cannot be sent twice. So a streamed upload is
given as a ``Body``: a factory that makes the stream again (the caller
regenerates it: reads its file or the source blob again). When the PATCH
fails (a dropped connection, a retryable status, a token renewed mid-way,
or a 404 because the registry lost the session), the whole upload starts
over in a new session, this time in ``CHUNK``-sized PATCHes held in memory,
each retried on its own, so a registry that fails every other request
still takes it. A chunk the registry took in part (416 on its retry) goes
on from the offset the registry reports.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import httpx

from r8imfs._threads import run_io
from r8imfs.errors import DigestMismatch, RegistryError, TransportError, UploadUnknown
from r8imfs.oci.digest import Hasher
from r8imfs.oci.reference import Repository
from r8imfs.registry._http import RETRY_STATUSES, Backoff
from r8imfs.registry.client import RegistryClient

CHUNK = 16 * 1024 * 1024
#: Chunks at least this big are hashed in a worker thread, off the trio loop.
THREAD_HASH_MIN = 256 * 1024
Progress = Callable[[int], None]
#: A streamed body that can be made again: each call opens a fresh stream.
Body = Callable[[], AbstractAsyncContextManager[AsyncIterable[bytes]]]

log = logging.getLogger("r8imfs.registry")


class _BodyFailed(Exception):
    """The body's producer failed (not the upload): never a reason to replay."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


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
    body: Body | AsyncIterable[bytes],
    *,
    expected: str | None = None,
    chunked: bool = False,
    progress: Progress | None = None,
) -> Uploaded:
    """Upload a stream as one blob; verify ``expected`` before committing.

    A ``Body`` factory is replayed in a new session when the upload fails
    on the way; a bare iterable gets one attempt.
    """
    make = body if callable(body) else _once(body)
    backoff = Backoff(client.options.retry)
    while True:
        try:
            async with make() as stream:
                return await _upload_once(
                    client, repo, stream, expected, chunked or backoff.retries > 0, progress
                )
        except _BodyFailed as exc:
            raise exc.cause from exc.cause.__cause__
        except RegistryError as exc:
            if not (callable(body) and _replayable(exc) and await backoff.wait(exc.retry_after)):
                raise
            log.info("upload to %s: %s; starting it again (%d)", repo, exc, backoff.retries)


def _replayable(exc: RegistryError) -> bool:
    """Failures a new upload session can get past."""
    if isinstance(exc, TransportError | UploadUnknown):
        return True
    return exc.status in RETRY_STATUSES or exc.status == 416


def _once(body: AsyncIterable[bytes]) -> Body:
    @asynccontextmanager
    async def opened() -> AsyncIterator[AsyncIterable[bytes]]:
        yield body

    return opened


async def _guarded(body: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The body, its own failures marked so that they are not replayed."""
    try:
        async for chunk in body:
            yield chunk
    except Exception as exc:
        raise _BodyFailed(exc) from exc


async def _upload_once(
    client: RegistryClient,
    repo: Repository,
    body: AsyncIterable[bytes],
    expected: str | None,
    chunked: bool,
    progress: Progress | None,
) -> Uploaded:
    """One session: POST, PATCH(es), verify, PUT."""
    location = _path(client, repo, await _start(client, repo))
    hasher = Hasher()

    async def hashed() -> AsyncIterator[bytes]:
        async for chunk in _guarded(body):
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
            missing=UploadUnknown,
        )
        location = _path(client, repo, response.headers.get("location", location))
    digest = hasher.digest
    if expected and digest != expected:
        await _cancel(client, repo, location)
        raise DigestMismatch(f"blob {expected} is corrupt (the bytes sent hash to {digest})")
    await _commit(client, repo, location, digest)
    return Uploaded(digest, hasher.size, "uploaded")


async def _commit(client: RegistryClient, repo: Repository, location: str, digest: str) -> None:
    """PUT ``?digest=``; a lost answer is fine if the blob is there after all."""
    try:
        await client.request(
            "PUT",
            repo,
            _with_digest(location, digest),
            what=f"upload of {digest}",
            ok=(201, 204),
            missing=UploadUnknown,
        )
    except (TransportError, UploadUnknown):
        if await client.head_blob(repo, digest) is None:
            raise


async def _patch_chunks(
    client: RegistryClient, repo: Repository, location: str, body: AsyncIterator[bytes]
) -> str:
    offset = 0
    buf = bytearray()

    async def flush(data: bytes) -> str:
        nonlocal offset, location
        start, end = offset, offset + len(data)
        while offset < end:
            try:
                response = await _patch_bytes(
                    client, repo, location, offset, data[offset - start :]
                )
            except RegistryError as exc:
                if exc.status != 416:
                    raise
                # a retried chunk the registry had taken in part: go on from its offset
                taken = await _upload_offset(client, repo, location)
                if not offset < taken <= end:
                    raise
                offset = taken
                continue
            offset = end
            location = _path(client, repo, response.headers.get("location", location))
        return location

    async for chunk in body:
        buf += chunk
        while len(buf) >= CHUNK:
            location = await flush(bytes(buf[:CHUNK]))
            del buf[:CHUNK]
    if buf:
        location = await flush(bytes(buf))
    return location


async def _patch_bytes(
    client: RegistryClient, repo: Repository, location: str, offset: int, data: bytes
) -> httpx.Response:
    return await client.request(
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
        missing=UploadUnknown,
    )


async def _upload_offset(client: RegistryClient, repo: Repository, location: str) -> int:
    """How many bytes the session holds (``Range: 0-N`` of a GET on it)."""
    response = await client.request(
        "GET", repo, location, what=f"upload status on {repo}", ok=(204,), missing=UploadUnknown
    )
    _, _, last = response.headers.get("range", "").partition("-")
    return int(last) + 1 if last.isdigit() else 0


async def upload_bytes(client: RegistryClient, repo: Repository, data: bytes) -> Uploaded:
    """Small blobs (configs): HEAD, then a single POST+PUT with the body."""
    hasher = Hasher()
    hasher.update(data)
    if await blob_exists(client, repo, hasher.digest):
        return Uploaded(hasher.digest, len(data), "exists")
    backoff = Backoff(client.options.retry)
    while True:
        location = _path(client, repo, await _start(client, repo))
        try:
            await client.request(
                "PUT",
                repo,
                _with_digest(location, hasher.digest),
                what=f"upload of {hasher.digest}",
                headers={"Content-Type": "application/octet-stream"},
                content=data,
                ok=(201, 204),
                missing=UploadUnknown,
            )
        except UploadUnknown:
            if await backoff.wait():
                continue
            raise
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
    # Across registries (or a registry that refuses mounts): stream it over,
    # from the source again if the upload has to start over.
    source = sources[0]

    @asynccontextmanager
    async def body() -> AsyncIterator[AsyncIterable[bytes]]:
        async with client.open_blob(source, digest) as stream:
            yield stream.chunks()

    try:
        return await upload_stream(client, repo, body, expected=digest, progress=progress)
    except DigestMismatch as exc:  # a bad proxy or CDN node, usually: once more
        log.info("%s; fetching it again", exc)
    try:
        return await upload_stream(client, repo, body, expected=digest, progress=progress)
    except DigestMismatch as exc:
        exc.message += "; the same when fetched again"
        raise
