"""RegistryClient against httpx.MockTransport: auth flows, redirects, retries.

A mock only stands in for the network here; the real registry tests live
in tests/integration/.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import httpx
import pytest

from r8imfs.errors import AuthError, BlobUnknown, DigestMismatch, ManifestUnknown
from r8imfs.oci import mediatypes as mt
from r8imfs.oci.digest import sha256
from r8imfs.oci.reference import parse
from r8imfs.registry._http import RetryPolicy
from r8imfs.registry.client import ClientOptions, RegistryClient

BLOB = b"hello blob"
BLOB_DIGEST = sha256(BLOB)
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": BLOB_DIGEST, "size": len(BLOB)},
        "layers": [],
    }
).encode()

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)


def _client(handler: Handler, **options: object) -> tuple[RegistryClient, Recorder]:
    rec = Recorder(handler)
    opts = ClientOptions(retry=RetryPolicy(attempts=3, base=0.001), **options)  # type: ignore[arg-type]
    return RegistryClient(opts, transport=httpx.MockTransport(rec)), rec


def bearer_registry(request: httpx.Request) -> httpx.Response:
    if request.url.host == "auth.test":
        scopes = request.url.params.get_list("scope")
        auth = request.headers.get("authorization", "")
        if auth != "Basic " + base64.b64encode(b"alice:pw").decode():
            return httpx.Response(401)
        return httpx.Response(
            200, json={"access_token": "tok:" + ",".join(scopes), "expires_in": 300}
        )
    if request.url.host == "cdn.test":
        return httpx.Response(200, stream=httpx.ByteStream(BLOB))
    if request.headers.get("authorization", "").startswith("Bearer tok:"):
        if "/blobs/" in request.url.path:
            return httpx.Response(307, headers={"location": "https://cdn.test/signed?x=1"})
        return httpx.Response(200, content=MANIFEST, headers={"content-type": mt.OCI_MANIFEST})
    return httpx.Response(
        401,
        headers={"www-authenticate": 'Bearer realm="https://auth.test/token",service="reg"'},
    )


@pytest.fixture
def alice(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    import pathlib

    d = pathlib.Path(str(tmp_path))
    (d / "config.json").write_text(
        json.dumps({"auths": {"reg.test": {"username": "alice", "password": "pw"}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    monkeypatch.setenv("HOME", str(d))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)


async def test_bearer_flow_and_token_reuse(alice: None) -> None:
    client, rec = _client(bearer_registry)
    async with client:
        ref = parse("reg.test/team/model:v1")
        await client.get_manifest(ref)
        await client.get_manifest(ref)
    token_requests = [r for r in rec.requests if r.url.host == "auth.test"]
    assert len(token_requests) == 1, "token cached per scope"
    assert token_requests[0].url.params.get_list("scope") == ["repository:team/model:pull"]
    assert token_requests[0].url.params["service"] == "reg"
    # the second manifest GET was authorised up front: no second 401
    assert [r.url.host for r in rec.requests].count("reg.test") == 3


async def test_redirect_target_never_sees_authorization(alice: None) -> None:
    client, rec = _client(bearer_registry)
    async with client:
        data = await client.get_blob(parse("reg.test/team/model").repository, BLOB_DIGEST)
    assert data == BLOB
    cdn = [r for r in rec.requests if r.url.host == "cdn.test"]
    assert len(cdn) == 1
    assert "authorization" not in cdn[0].headers


async def test_wrong_credentials_are_auth_errors_naming_the_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    client, _ = _client(bearer_registry)
    async with client:
        with pytest.raises(AuthError, match="reg.test") as info:
            await client.get_manifest(parse("reg.test/team/model"))
    assert "docker login" in str(info.value) or "token" in str(info.value)


async def test_retries_honour_retry_after_then_succeed() -> None:
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] < 3:
            return httpx.Response(503 if calls["n"] == 1 else 429, headers={"retry-after": "0"})
        return httpx.Response(200, content=MANIFEST, headers={"content-type": mt.OCI_MANIFEST})

    client, _ = _client(flaky)
    async with client:
        m = await client.get_manifest(parse("127.0.0.1:1/a"))
    assert calls["n"] == 3 and m.media_type == mt.OCI_MANIFEST


async def test_loopback_is_plain_http_and_others_https() -> None:
    client, rec = _client(lambda r: httpx.Response(200, content=MANIFEST))
    async with client:
        await client.get_manifest(parse("localhost:5000/a"))
        await client.get_manifest(parse("example.com/a"))
    assert [r.url.scheme for r in rec.requests] == ["http", "https"]


async def test_manifest_digest_is_verified() -> None:
    client, _ = _client(lambda r: httpx.Response(200, content=MANIFEST))
    async with client:
        with pytest.raises(DigestMismatch):
            await client.get_manifest(parse("127.0.0.1:1/a@sha256:" + "0" * 64))
        lying = _client(
            lambda r: httpx.Response(
                200, content=MANIFEST, headers={"docker-content-digest": "sha256:" + "1" * 64}
            )
        )[0]
        async with lying:
            with pytest.raises(DigestMismatch):
                await lying.get_manifest(parse("127.0.0.1:1/a:tag"))


async def test_404_is_manifest_unknown_with_registry_words() -> None:
    body = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
    client, _ = _client(lambda r: httpx.Response(404, json=body))
    async with client:
        with pytest.raises(ManifestUnknown, match="MANIFEST_UNKNOWN"):
            await client.get_manifest(parse("127.0.0.1:1/a:nope"))


def test_the_command_line_makes_httpcore_read_a_mebibyte_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Process-wide, so applied once at start-up by ``main``, not per client."""
    import httpcore

    from r8imfs.cli.main import main
    from r8imfs.registry._http import SOCKET_READ
    from r8imfs.registry.client import RegistryClient

    monkeypatch.setattr(httpcore.AsyncHTTP11Connection, "READ_NUM_BYTES", 65536)
    RegistryClient()
    assert httpcore.AsyncHTTP11Connection.READ_NUM_BYTES == 65536
    assert main(["layers", "UPPER/case"]) == 2  # a usage error, after start-up
    assert httpcore.AsyncHTTP11Connection.READ_NUM_BYTES >= SOCKET_READ


async def test_a_404_is_the_kind_the_caller_names_not_a_guess_from_the_message() -> None:
    """A repository named "blobstore" once made a missing manifest a missing blob."""
    client, _ = _client(lambda r: httpx.Response(404, json={"errors": []}))
    async with client:
        with pytest.raises(ManifestUnknown):
            await client.get_manifest(parse("127.0.0.1:1/blobstore/blob:nope"))
        with pytest.raises(BlobUnknown):
            await client.get_blob(parse("127.0.0.1:1/manifests/x:y").repository, BLOB_DIGEST)
