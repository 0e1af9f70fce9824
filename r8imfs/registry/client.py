"""The one async registry client every command uses.

``RegistryClient`` wraps one ``httpx.AsyncClient`` (no client-wide auth and
no automatic redirects) and keeps a ``RegistryAuth`` per registry host.
Requests to a registry's own origin carry its auth flow; a redirect to any
other origin (a CDN, S3) is followed by hand with no ``Authorization`` at
all, the hazard containers/image #641 describes.

Plain HTTP is used for loopback registries (as Docker does) and for hosts
named with ``--insecure``; TLS is verified everywhere else.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

from r8imfs.errors import (
    BlobUnknown,
    DigestMismatch,
    ManifestUnknown,
    RangeUnsupported,
    RegistryError,
    TransportError,
)
from r8imfs.oci import digest as _digest
from r8imfs.oci import mediatypes as mt
from r8imfs.oci.config import ImageConfig
from r8imfs.oci.manifest import DEFAULT_PLATFORM, Index, Manifest, Platform, parse
from r8imfs.oci.reference import Reference, Repository, is_loopback
from r8imfs.registry import _tls, credentials
from r8imfs.registry._http import (
    REDIRECTS,
    RETRY_STATUSES,
    Backoff,
    RetryPolicy,
    raise_for_status,
    same_origin,
    stall_timeout,
    translate,
)
from r8imfs.registry._rawbody import body_chunks
from r8imfs.registry.auth import RegistryAuth

MAX_MANIFEST = 4 * 1024 * 1024
MAX_CONFIG = 64 * 1024 * 1024
MAX_REDIRECTS = 5

log = logging.getLogger("r8imfs.registry")


@dataclass(frozen=True, slots=True)
class ClientOptions:
    cog_token: str | None = None
    insecure: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    connect_timeout: float = 15.0
    #: no byte for this long ends an attempt (then retried): a stalled registry
    read_timeout: float = field(default_factory=stall_timeout)
    user_agent: str = "r8imfs/0.1"


@dataclass(frozen=True, slots=True)
class Found:
    """One platform's manifest, found (through an index if need be); no config yet."""

    reference: Reference  # pinned to the manifest's digest
    manifest: Manifest
    index: Index | None = None
    platform: Platform | None = None


@dataclass(frozen=True, slots=True)
class Image:
    """A resolved single-platform image: what most commands work on."""

    reference: Reference
    manifest: Manifest
    config: ImageConfig
    index: Index | None = None
    platform: Platform | None = None

    @property
    def digest(self) -> str:
        return self.manifest.digest


class RegistryClient:
    def __init__(
        self,
        options: ClientOptions | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.options = options or ClientOptions()
        timeout = httpx.Timeout(
            self.options.connect_timeout, read=self.options.read_timeout, pool=None
        )
        self._http = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            verify=_tls.context(),  # httpx's default context, shared (registry._tls)
            transport=transport,
            headers={"User-Agent": self.options.user_agent},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
        self._auth: dict[str, RegistryAuth] = {}

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- plumbing -----------------------------------------------------------
    def base_url(self, repo: Repository | str) -> str:
        host = repo.api_host if isinstance(repo, Repository) else repo
        plain = is_loopback(host) or self.options.insecure
        return f"{'http' if plain else 'https'}://{host}"

    def auth_for(self, repo: Repository | str) -> RegistryAuth:
        host = repo.api_host if isinstance(repo, Repository) else repo
        if host not in self._auth:
            cred = credentials.find(
                repo.registry if isinstance(repo, Repository) else host,
                cog_token=self.options.cog_token,
            )
            self._auth[host] = RegistryAuth(host, self.base_url(host), cred, self._send_plain)
        return self._auth[host]

    async def _send_plain(self, request: httpx.Request) -> httpx.Response:
        """Token-service and verify-token requests: retried, never redirected with auth.

        Statuses only: a connection that fails is retried by the request that
        needed the token (else five tries of five).
        """
        return await self._retrying(
            request.url.host,
            "authentication",
            lambda: self._http.send(request),
            replayable=True,
            retry_drops=False,
        )

    async def _retrying(
        self,
        host: str,
        what: str,
        send: Callable[[], Awaitable[httpx.Response]],
        *,
        replayable: bool,
        retry_drops: bool = True,
    ) -> httpx.Response:
        """The one retry loop of requests: dropped connections and retryable statuses.

        A request whose body cannot be sent twice (``replayable`` False) gets
        one attempt; its caller starts over (a new upload session).
        """
        backoff = Backoff(self.options.retry)
        while True:
            try:
                with translate(host, what):
                    response = await send()
            except TransportError as exc:
                if replayable and retry_drops and await backoff.wait():
                    log.info("%s: %s; trying again", what, exc)
                    continue
                raise
            status = response.status_code
            if status in RETRY_STATUSES and replayable and not backoff.exhausted():
                retry_after = response.headers.get("retry-after")
                await response.aclose()
                await backoff.wait(retry_after)
                log.info("%s: %s answered HTTP %d; trying again", what, host, status)
                continue
            return response

    async def request(
        self,
        method: str,
        repo: Repository | str,
        path: str,
        *,
        what: str,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        content: bytes | AsyncIterable[bytes] | None = None,
        stream: bool = False,
        ok: tuple[int, ...] = (200,),
        extra_ok: tuple[int, ...] = (),
        missing: type[RegistryError] = RegistryError,
    ) -> httpx.Response:
        """Send with auth, retries and safe redirects; raise unless the status is ``ok``.

        ``missing`` is what a 404 means here (``BlobUnknown``, ``ManifestUnknown``,
        ``UploadUnknown``), told by the caller rather than guessed from ``what``.
        """
        url = self.base_url(repo) + path
        host = repo.registry if isinstance(repo, Repository) else repo

        async def send() -> httpx.Response:
            request = self._http.build_request(
                method, url, headers=headers, params=params, content=content
            )
            return await self._send_following(request, repo, stream)

        replayable = content is None or isinstance(content, bytes)
        response = await self._retrying(host, what, send, replayable=replayable)
        if response.status_code not in ok + extra_ok:
            if stream:
                await response.aread()
            await response.aclose()
            raise_for_status(response, host, what, missing)
            raise RegistryError(f"{host} answered HTTP {response.status_code} for {what}")
        return response

    async def _send_following(
        self, request: httpx.Request, repo: Repository | str, stream: bool
    ) -> httpx.Response:
        origin = request.url
        auth = self.auth_for(repo)
        response = await self._http.send(request, auth=auth, stream=stream)
        for _ in range(MAX_REDIRECTS):
            if response.status_code not in REDIRECTS or "location" not in response.headers:
                return response
            target = response.url.join(response.headers["location"])
            await response.aclose()
            headers = {k: v for k, v in request.headers.items() if k.lower() in ("range", "accept")}
            follow = self._http.build_request(request.method, target, headers=headers)
            # Only the registry's own origin ever sees its credentials.
            hop_auth = auth if same_origin(target, origin) else None
            response = await self._http.send(follow, auth=hop_auth, stream=stream)
        return response

    # -- manifests ----------------------------------------------------------
    async def ping(self, registry: str) -> int:
        """GET /v2/: records the auth challenge; returns the status."""
        with translate(registry, "/v2/"):
            response = await self._http.get(self.base_url(registry) + "/v2/")
        if response.status_code == 401:
            await self.auth_for(registry).prime(response.headers.get("www-authenticate"))
        return response.status_code

    async def get_manifest(
        self, ref: Reference, accept: tuple[str, ...] = mt.MANIFEST_ACCEPT
    ) -> Manifest | Index:
        what = f"manifest {ref}"
        response = await self.request(
            "GET",
            ref.repository,
            f"/v2/{ref.name}/manifests/{ref.identifier}",
            what=what,
            headers={"Accept": ", ".join(accept)},
            missing=ManifestUnknown,
        )
        raw = response.content
        if len(raw) > MAX_MANIFEST:
            raise RegistryError(f"{what} is larger than {MAX_MANIFEST} bytes; refusing it")
        if ref.digest:
            _digest.verify(raw, ref.digest, what)
        else:
            header = response.headers.get("docker-content-digest", "")
            if header.startswith("sha256:") and header != _digest.sha256(raw):
                raise DigestMismatch(f"{what}: body does not match Docker-Content-Digest {header}")
        return parse(raw, response.headers.get("content-type"))

    async def head_manifest(self, ref: Reference) -> str | None:
        response = await self.request(
            "HEAD",
            ref.repository,
            f"/v2/{ref.name}/manifests/{ref.identifier}",
            what=f"manifest {ref}",
            headers={"Accept": ", ".join(mt.MANIFEST_ACCEPT)},
            extra_ok=(404,),
        )
        if response.status_code == 404:
            return None
        digest: str | None = response.headers.get("docker-content-digest")
        return digest

    async def put_manifest(
        self, repo: Repository, identifier: str, raw: bytes, media_type: str
    ) -> str:
        """PUT a manifest under a tag or its digest; returns its digest."""
        await self.request(
            "PUT",
            repo,
            f"/v2/{repo.name}/manifests/{identifier}",
            what=f"manifest {repo}:{identifier}",
            headers={"Content-Type": media_type},
            content=raw,
            ok=(200, 201, 202),
        )
        return _digest.sha256(raw)

    async def resolve(self, ref: Reference, platform: Platform | None = None) -> Image:
        """Manifest (through an index if need be) and config of one platform."""
        return await self.with_config(await self.find_manifest(ref, platform))

    async def find_manifest(self, ref: Reference, platform: Platform | None = None) -> Found:
        """``resolve`` up to the manifest: what needs only the manifest (its SOCI
        index, its layers) can start while ``with_config`` fetches the config."""
        top = await self.get_manifest(ref)
        index = None
        if isinstance(top, Index):
            index = top
            chosen = top.select(platform or DEFAULT_PLATFORM)
            child = await self.get_manifest(ref.with_digest(chosen.digest))
            if not isinstance(child, Manifest):
                raise RegistryError(f"{ref}: index entry {chosen.digest} is not an image manifest")
            top = child
            platform = chosen.platform
        return Found(ref.with_digest(top.digest), top, index, platform)

    async def with_config(self, found: Found) -> Image:
        """The image ``found`` is, with its config fetched."""
        repo, digest = found.reference.repository, found.manifest.config.digest
        config = ImageConfig.parse(await self.get_blob(repo, digest, MAX_CONFIG))
        platform = found.platform
        if platform is None and config.data.get("os"):
            platform = Platform(
                config.data.get("os", ""),
                config.data.get("architecture", ""),
                config.data.get("variant") or None,
            )
        return Image(found.reference, found.manifest, config, found.index, platform)

    # -- blobs --------------------------------------------------------------
    async def head_blob(self, repo: Repository, digest: str) -> int | None:
        response = await self.request(
            "HEAD", repo, f"/v2/{repo.name}/blobs/{digest}", what=f"blob {digest}", extra_ok=(404,)
        )
        if response.status_code == 404:
            return None
        return int(response.headers.get("content-length", "-1"))

    async def get_blob(self, repo: Repository, digest: str, max_size: int = MAX_CONFIG) -> bytes:
        """A small blob, whole and verified (configs, small layers in tests)."""
        chunks = []
        total = 0
        async with self.open_blob(repo, digest) as stream:
            async for chunk in stream.chunks():
                total += len(chunk)
                if total > max_size:
                    raise RegistryError(f"blob {digest} is larger than {max_size} bytes")
                chunks.append(chunk)
        data = b"".join(chunks)
        _digest.verify(data, digest, f"blob {digest}")
        return data

    @asynccontextmanager
    async def open_blob(
        self, repo: Repository, digest: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[BlobStream]:
        """Stream ``[start, end)`` of a blob (``end`` None: to the end).

        ``stream.start`` is where the body really begins: 0 when the
        registry ignored ``Range`` and sent the whole blob (status 200).
        Dropped connections resume from the last byte received.
        """
        stream = BlobStream(self, repo, digest, start, end)
        try:
            await stream.open()
            yield stream
        finally:
            await stream.aclose()


class BlobStream:
    """One ranged blob GET that resumes itself after dropped connections."""

    def __init__(
        self,
        client: RegistryClient,
        repo: Repository,
        digest: str,
        start: int,
        end: int | None,
    ) -> None:
        self._client = client
        self.repo = repo
        self.digest = digest
        self.requested = (start, end)
        self.start = start
        self.status = 0
        self.total: int | None = None
        self._response: httpx.Response | None = None
        self._pos = start
        self.resumes = 0

    async def open(self) -> None:
        self._response = await self._get(self._pos)
        self.status = self._response.status_code
        if self.status == 200:
            self.start = 0
            self._pos = 0
            length = self._response.headers.get("content-length")
            self.total = int(length) if length else None
        else:
            self.total = _content_range_total(self._response.headers.get("content-range", ""))

    async def _get(self, pos: int) -> httpx.Response:
        _, end = self.requested
        headers = {}
        if pos or end is not None:
            headers["Range"] = f"bytes={pos}-{'' if end is None else end - 1}"
        return await self._client.request(
            "GET",
            self.repo,
            f"/v2/{self.repo.name}/blobs/{self.digest}",
            what=f"blob {self.digest}",
            headers=headers,
            stream=True,
            ok=(200, 206),
            missing=BlobUnknown,
        )

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, resuming with ``Range`` after a dropped or stalled connection.

        It resumes for as long as attempts make progress (``RetryPolicy.
        progress`` bytes each); only ``attempts`` in a row without progress,
        or the policy's deadline, end it.
        """
        async for chunk in self._chunks(None):
            yield chunk if isinstance(chunk, bytes) else bytes(chunk)

    async def fill(self, buf: bytearray, counted: Callable[[int], object]) -> int:
        """The body into ``buf`` from its start (resuming as ``chunks`` does); the
        bytes it holds. Over plain HTTP a big body goes from the socket straight
        into ``buf`` (``_rawbody``: no copy on the loop). ``counted`` hears of
        each piece's size as it arrives. ``RegistryError`` if the body is longer.
        """
        view, start, got = memoryview(buf), self._pos, 0
        async for chunk in self._chunks(view, start):
            n = len(chunk)
            counted(n)
            if got + n > len(buf):
                raise RegistryError(f"{self.repo.registry} sent more than asked of {self.digest}")
            if not (isinstance(chunk, memoryview) and chunk.obj is buf):
                view[got : got + n] = chunk
            got += n
        return got

    async def _chunks(
        self, into: memoryview | None, start: int = 0
    ) -> AsyncIterator[bytes | memoryview]:
        """``chunks``'s loop; with ``into`` (the buffer for the body from blob
        position ``start`` on), each attempt's body may be read into it in place."""
        backoff = Backoff(self._client.options.retry)
        skip = 0
        mark = self._pos
        while True:
            assert self._response is not None
            try:
                place = into[self._pos - start :] if into is not None and not skip else None
                body = body_chunks(self._response, self._client.options.read_timeout, into=place)
                async with contextlib.aclosing(body):
                    async for chunk in body:
                        if skip:
                            # the registry restarted from byte 0: drop what we have
                            cut = min(skip, len(chunk))
                            chunk, skip = chunk[cut:], skip - cut
                            if not chunk:
                                continue
                        self._pos += len(chunk)
                        yield chunk
                self._log_resumes()
                return
            except httpx.TransportError as exc:
                await self._response.aclose()
                if self._pos - mark >= backoff.policy.progress:
                    backoff.progress()
                mark = self._pos
                if not await backoff.wait():
                    self._log_resumes()
                    raise self._gave_up(exc) from exc
                self.resumes += 1
                skip = await self._reopen()

    def _gave_up(self, exc: httpx.TransportError) -> TransportError:
        how = (
            f"stalled (no byte for {self._client.options.read_timeout:g} s)"
            if isinstance(exc, httpx.TimeoutException)
            else "kept dropping"
        )
        return TransportError(
            f"{self.repo.registry}: blob {self.digest} {how} at byte {self._pos}"
            f" ({self.resumes} resume(s), the last ones without progress)"
        )

    def _log_resumes(self) -> None:
        if self.resumes:
            log.info("blob %s: resumed %d time(s)", self.digest, self.resumes)

    async def _reopen(self) -> int:
        """Resume at ``_pos``; returns how many leading bytes to drop (a 200 reply)."""
        self._response = await self._get(self._pos)
        if self._response.status_code == 200:
            return self._pos
        got = _content_range_start(self._response.headers.get("content-range", ""))
        if got != self._pos:
            raise RangeUnsupported(f"{self.repo.registry} resumed blob {self.digest} at {got}")
        return 0

    async def aclose(self) -> None:
        if self._response is not None:
            await self._response.aclose()


def _content_range_total(header: str) -> int | None:
    _, _, total = header.rpartition("/")
    return int(total) if total.isdigit() else None


def _content_range_start(header: str) -> int:
    try:
        return int(header.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return -1
