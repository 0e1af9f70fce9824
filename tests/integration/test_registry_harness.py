"""The test harness is real: registries, token service and fronts, seen by plain clients.

Only httpx (sync is fine here: no r8imfs code runs) and skopeo talk to the
servers, so a failure here is the harness's, not r8imfs's.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.helpers.registry import (
    BASIC_REALM,
    TOKEN_SERVICE,
    CogFront,
    RedirectFront,
    RegistryServer,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _bearer_challenge(header: str) -> dict[str, str]:
    scheme, _, params = header.partition(" ")
    assert scheme == "Bearer"
    pairs = (part.split("=", 1) for part in params.split(","))
    return {key: value.strip('"') for key, value in pairs}


def _token(server: RegistryServer, *scopes: str) -> str:
    assert server.token_server is not None
    params = {"service": TOKEN_SERVICE, "scope": list(scopes)}
    resp = httpx.get(server.token_server.realm, params=params, auth=server.credentials)
    resp.raise_for_status()
    return str(resp.json()["token"])


def _push_blob(client: httpx.Client, base: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = client.post(f"{base}/v2/{repo}/blobs/uploads/")
    assert started.status_code == 202, started.text
    # The upload URL carries its own query (_state): merge, do not replace.
    location = httpx.URL(started.headers["Location"]).copy_merge_params({"digest": digest})
    done = client.put(location, content=data)
    assert done.status_code == 201, done.text
    return digest


def test_open_registry_answers_v2(registry: RegistryServer) -> None:
    resp = httpx.get(f"{registry.url}/v2/")
    assert resp.status_code == 200
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert registry.credentials is None
    assert registry.host.startswith("127.0.0.1:")


def test_basic_registry_challenges_then_accepts(basic_registry: RegistryServer) -> None:
    url = f"{basic_registry.url}/v2/"
    anonymous = httpx.get(url)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == f'Basic realm="{BASIC_REALM}"'
    assert httpx.get(url, auth=basic_registry.credentials).status_code == 200
    assert httpx.get(url, auth=(str(basic_registry.username), "wrong")).status_code == 401


def test_token_registry_bearer_flow(token_registry: RegistryServer) -> None:
    assert token_registry.token_server is not None
    challenge = httpx.get(f"{token_registry.url}/v2/")
    assert challenge.status_code == 401
    params = _bearer_challenge(challenge.headers["WWW-Authenticate"])
    assert params == {"realm": token_registry.token_server.realm, "service": TOKEN_SERVICE}

    token = _token(token_registry, "repository:harness/flow:pull")
    ok = httpx.get(f"{token_registry.url}/v2/", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    seen = token_registry.token_server.requests[-1]
    assert seen.scopes == ("repository:harness/flow:pull",)
    assert seen.auth_present
    assert seen.username == token_registry.username
    assert seen.service == TOKEN_SERVICE


def test_anonymous_token_grants_nothing(token_registry: RegistryServer) -> None:
    assert token_registry.token_server is not None
    resp = httpx.get(
        token_registry.token_server.realm,
        params={"service": TOKEN_SERVICE, "scope": "repository:harness/anon:pull"},
    )
    assert resp.status_code == 200
    assert not token_registry.token_server.requests[-1].auth_present
    headers = {"Authorization": f"Bearer {resp.json()['token']}"}
    denied = httpx.get(f"{token_registry.url}/v2/harness/anon/tags/list", headers=headers)
    assert denied.status_code == 401
    assert 'error="insufficient_scope"' in denied.headers["WWW-Authenticate"]


def test_token_server_refuses_bad_password(token_registry: RegistryServer) -> None:
    assert token_registry.token_server is not None
    realm = token_registry.token_server.realm
    assert httpx.get(realm, auth=("r8imfs-tester", "nope")).status_code == 401
    form = {"grant_type": "password", "username": "r8imfs-tester", "password": "nope"}
    assert httpx.post(realm, data=form).status_code == 401


def test_token_server_oauth2_password_and_refresh(token_registry: RegistryServer) -> None:
    assert token_registry.token_server is not None
    realm = token_registry.token_server.realm
    scope = "repository:harness/oauth:pull,push"
    first = httpx.post(
        realm,
        data={
            "grant_type": "password",
            "username": token_registry.username,
            "password": token_registry.password,
            "service": TOKEN_SERVICE,
            "scope": scope,
            "access_type": "offline",
            "client_id": "r8imfs-tests",
        },
    )
    assert first.status_code == 200, first.text
    refresh_token = first.json()["refresh_token"]
    second = httpx.post(
        realm,
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "service": TOKEN_SERVICE,
            "scope": scope,
        },
    )
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    with httpx.Client(headers=headers) as client:
        _push_blob(client, token_registry.url, "harness/oauth", b"refreshed")
    grants = [r.grant_type for r in token_registry.token_server.requests[-2:]]
    assert grants == ["password", "refresh_token"]


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _write_oci_layout(root: Path, tag: str, layer: bytes) -> None:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes, media_type: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    layer_desc = put(layer, "application/vnd.oci.image.layer.v1.tar")
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }
    config_desc = put(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc,
        "layers": [layer_desc],
    }
    manifest_desc = put(json.dumps(manifest).encode(), OCI_MANIFEST)
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index = {"schemaVersion": 2, "manifests": [manifest_desc]}
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def test_skopeo_pushes_into_token_registry(token_registry: RegistryServer, tmp_path: Path) -> None:
    assert token_registry.token_server is not None
    layout = tmp_path / "layout"
    _write_oci_layout(layout, "v1", _tar({"hello.txt": b"hello from r8imfs\n"}))
    env = {**os.environ, "HOME": str(tmp_path / "home")}  # keep skopeo's caches here
    subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            f"--dest-creds={token_registry.username}:{token_registry.password}",
            f"oci:{layout}:v1",
            f"docker://{token_registry.host}/harness/tiny:v1",
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=120,
    )
    pushes = [r for r in token_registry.token_server.requests if r.username is not None]
    assert any("repository:harness/tiny:pull,push" in r.scopes for r in pushes)

    headers = {"Authorization": f"Bearer {_token(token_registry, 'repository:harness/tiny:pull')}"}
    with httpx.Client(base_url=token_registry.url, headers=headers) as client:
        resp = client.get("/v2/harness/tiny/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert resp.status_code == 200, resp.text
        (layer,) = resp.json()["layers"]
        blob = client.get(f"/v2/harness/tiny/blobs/{layer['digest']}").content
    raw = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob  # skopeo may compress
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        member = tar.extractfile("hello.txt")
        assert member is not None
        assert member.read() == b"hello from r8imfs\n"


@pytest.fixture
def redirected_blob(redirect_front: RedirectFront, repo_name: str) -> tuple[str, bytes]:
    data = os.urandom(100_000)
    with httpx.Client() as client:
        digest = _push_blob(client, redirect_front.url, repo_name, data)
    return f"/v2/{repo_name}/blobs/{digest}", data


def test_redirect_front_sends_blob_gets_elsewhere(
    redirect_front: RedirectFront, redirected_blob: tuple[str, bytes]
) -> None:
    path, data = redirected_blob
    before = len(redirect_front.blob_requests)
    with httpx.Client() as client:
        hop = client.get(redirect_front.url + path)
        assert hop.status_code == 307
        location = hop.headers["Location"]
        assert location.startswith(redirect_front.blob_url + "/")
        assert redirect_front.blob_host != redirect_front.host
        # HEAD is the registry's own business; only GETs are redirected.
        head = client.head(redirect_front.url + path)
        assert head.status_code == 200
        assert head.headers["Content-Length"] == str(len(data))
        followed = client.get(redirect_front.url + path, follow_redirects=True)
        assert followed.content == data
        ranged = client.get(location, headers={"Range": "bytes=10-19"})
        assert ranged.status_code == 206
        assert ranged.content == data[10:20]
        assert ranged.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    seen = redirect_front.wait_blob_requests(before + 2)[-2:]
    assert [r.headers.get("range") for r in seen] == [None, "bytes=10-19"]
    assert not any(r.auth_present for r in seen)


def test_redirect_target_rejects_authorization(
    redirect_front: RedirectFront, redirected_blob: tuple[str, bytes]
) -> None:
    path, _ = redirected_blob
    before = len(redirect_front.blob_requests)
    with httpx.Client() as client:
        location = client.get(redirect_front.url + path).headers["Location"]
        leaked = client.get(location, headers={"Authorization": "Bearer secret"})
    assert leaked.status_code == 400
    assert redirect_front.wait_blob_requests(before + 1)[-1].auth_present


def test_redirect_front_keeps_registry_errors(redirect_front: RedirectFront) -> None:
    missing = "/v2/harness/none/blobs/sha256:" + "0" * 64
    resp = httpx.get(redirect_front.url + missing)
    assert resp.status_code == 404
    assert resp.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_cog_front_verifies_tokens(cog_front: CogFront) -> None:
    url = f"{cog_front.url}/cog/v1/verify-token"
    good = httpx.post(url, data={"token": cog_front.token})
    assert good.status_code == 200
    assert good.json() == {"username": cog_front.username}
    assert httpx.post(url, data={"token": "r8_wrong"}).status_code == 401
    assert [r.username for r in cog_front.verify_requests[-2:]] == [cog_front.username, None]


def test_cog_front_proxies_a_streamed_upload(cog_front: CogFront, repo_name: str) -> None:
    piece = os.urandom(1 << 20)
    pieces = 24  # big enough that buffering it all would show, chunked on the wire
    digest = hashlib.sha256(piece * pieces).hexdigest()
    auth = (cog_front.username, cog_front.token)
    with httpx.Client(base_url=cog_front.url, auth=auth, timeout=60) as client:
        assert client.get("/v2/", auth=None).status_code == 401
        started = client.post(f"/v2/{repo_name}/blobs/uploads/")
        assert started.status_code == 202
        location = started.headers["Location"]
        assert location.startswith(cog_front.url + "/")  # rewritten to the front
        patched = client.patch(location, content=(piece for _ in range(pieces)))
        assert patched.status_code == 202, patched.text
        finish = httpx.URL(patched.headers["Location"])
        done = client.put(finish.copy_merge_params({"digest": f"sha256:{digest}"}))
        assert done.status_code == 201, done.text
        head = client.head(f"/v2/{repo_name}/blobs/sha256:{digest}")
    assert head.headers["Content-Length"] == str(len(piece) * pieces)


def test_docker_config_writes_auths(
    docker_config: Callable[..., Path], basic_registry: RegistryServer
) -> None:
    path = docker_config(basic_registry)
    docker_config("other.example", identitytoken="refresh-me")
    assert os.environ["DOCKER_CONFIG"] == str(path.parent)
    auths = json.loads(path.read_text())["auths"]
    userpass = base64.b64decode(auths[basic_registry.host]["auth"]).decode()
    assert userpass == f"{basic_registry.username}:{basic_registry.password}"
    assert auths["other.example"] == {"identitytoken": "refresh-me"}
