"""``r8imfs layers`` and the client against real registries: open, Basic, token, cog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from r8imfs.oci import mediatypes as mt
from r8imfs.oci.reference import parse
from r8imfs.registry.client import RegistryClient
from r8imfs.registry.upload import ensure_blob
from tests.helpers.images import cli, push, push_index, skopeo_json
from tests.helpers.registry import CogFront, RedirectFront, RegistryServer


def _layers_json(*args: str) -> dict[str, Any]:
    proc = cli("layers", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize(
    ("manifest_type", "compression"),
    [
        (mt.DOCKER_MANIFEST, "gzip"),
        (mt.OCI_MANIFEST, "gzip"),
        (mt.OCI_MANIFEST, "zstd"),
        (mt.OCI_MANIFEST, "none"),
    ],
)
def test_layers_matches_skopeo(
    registry: RegistryServer, repo_name: str, manifest_type: str, compression: str
) -> None:
    ref = f"{registry.host}/{repo_name}:v1"
    digest = push(ref, manifest_type=manifest_type, compression=compression)
    ours = _layers_json(ref)
    raw = skopeo_json("inspect", "--raw", "--tls-verify=false", f"docker://{ref}")
    config = skopeo_json("inspect", "--config", "--tls-verify=false", f"docker://{ref}")
    assert ours["digest"] == digest
    assert ours["mediaType"] == raw["mediaType"] == manifest_type
    assert ours["platform"] == "linux/amd64"
    assert [x["digest"] for x in ours["layers"]] == [x["digest"] for x in raw["layers"]]
    assert [x["size"] for x in ours["layers"]] == [x["size"] for x in raw["layers"]]
    assert [x["mediaType"] for x in ours["layers"]] == [x["mediaType"] for x in raw["layers"]]
    assert [x["diffId"] for x in ours["layers"]] == config["rootfs"]["diff_ids"]
    history = [h for h in config["history"] if not h.get("empty_layer")]
    nop = "/bin/sh -c #(nop) "
    expected = [h.get("created_by", "").removeprefix(nop) for h in history]
    assert [x["createdBy"] for x in ours["layers"]] == expected
    assert ours["layers"][2]["comment"] == "weights"


def test_layers_table_is_readable(registry: RegistryServer, repo_name: str) -> None:
    ref = f"{registry.host}/{repo_name}:v1"
    push(ref)
    proc = cli("report", ref)  # the original's alias
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[2].split()[:3] == ["#", "DIGEST", "SIZE"]
    assert "# weights" in lines[5] and lines[5].rstrip().endswith("weights")
    assert lines[-1].startswith("3 layers")


def test_registry_flag_and_global_options_after_subcommand(
    registry: RegistryServer, repo_name: str
) -> None:
    push(f"{registry.host}/{repo_name}:v1")
    before = _layers_json("-r", registry.host, f"{repo_name}:v1")
    after = cli("layers", f"{repo_name}:v1", "--json", "-r", registry.host)
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["digest"] == before["digest"]


def test_multi_platform_index(registry: RegistryServer, repo_name: str) -> None:
    amd = push(f"{registry.host}/{repo_name}:amd")
    arm = push(
        f"{registry.host}/{repo_name}:arm",
        config={
            "os": "linux",
            "architecture": "arm64",
            "rootfs": {"type": "layers", "diff_ids": []},
        },
    )
    ref = f"{registry.host}/{repo_name}:multi"
    trio.run(push_index, ref, {"linux/amd64": amd, "linux/arm64": arm})
    assert _layers_json(ref)["digest"] == amd
    picked = _layers_json("--platform", "linux/arm64", ref)
    assert (picked["digest"], picked["platform"]) == (arm, "linux/arm64")
    missing = cli("layers", "--platform", "linux/s390x", ref)
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1
    assert "linux/amd64" in missing.stderr and "linux/arm64" in missing.stderr


def test_basic_auth(basic_registry: RegistryServer, repo_name: str, docker_config: Any) -> None:
    ref = f"{basic_registry.host}/{repo_name}:v1"
    denied = cli("layers", ref)
    assert denied.returncode == 4, denied.stderr
    assert denied.stderr.count("\n") == 1 and "Traceback" not in denied.stderr
    assert basic_registry.host in denied.stderr and "--token" in denied.stderr
    docker_config(basic_registry)
    digest = push(ref)
    assert _layers_json(ref)["digest"] == digest


def test_token_auth_scopes(
    token_registry: RegistryServer, repo_name: str, docker_config: Any
) -> None:
    docker_config(token_registry)
    src = f"{token_registry.host}/{repo_name}-src:v1"
    digest = push(src)
    assert _layers_json(src)["digest"] == digest
    server = token_registry.token_server
    assert server is not None
    seen = [r for r in server.requests if r.username]
    assert seen, "the token server authenticated us"

    async def mount() -> str:
        async with RegistryClient() as client:
            image = await client.resolve(parse(src))
            dst = parse(f"{token_registry.host}/{repo_name}-dst").repository
            layer = image.manifest.layers[-1]
            done = await ensure_blob(client, dst, layer.digest, [image.reference.repository])
            return done.how

    server.requests.clear()
    assert trio.run(mount) == "mounted"
    scopes = [r.scopes for r in server.requests if hasattr(r, "scopes")]
    joined = [" ".join(s) for s in scopes]
    assert any(
        f"repository:{repo_name}-dst:pull,push" in j and f"repository:{repo_name}-src:pull" in j
        for j in joined
    ), joined


def test_token_registry_without_credentials_is_one_clear_line(
    token_registry: RegistryServer, repo_name: str, docker_config: Any
) -> None:
    docker_config(token_registry)
    ref = f"{token_registry.host}/{repo_name}:v1"
    push(ref)
    docker_config(token_registry.host, "nobody", "wrong")
    proc = cli("layers", ref)
    assert proc.returncode == 4
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "wrong" not in proc.stderr


def test_cog_token(cog_front: CogFront, repo_name: str, docker_config: Any) -> None:
    docker_config("unrelated.example", "x", "y")  # isolate from the machine's config
    ref = f"{cog_front.host}/{repo_name}:v1"
    digest = push(ref, token=cog_front.token)
    ok = cli("layers", "--json", "-t", cog_front.token, ref)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["digest"] == digest
    via_env = cli("layers", "--json", ref, env={"COG_TOKEN": cog_front.token})
    assert via_env.returncode == 0, via_env.stderr
    assert cog_front.verify_requests, "the token was exchanged at /cog/v1/verify-token"
    bad = cli("layers", "-v", "-t", "r8_not-the-token-canary", ref)
    assert bad.returncode == 4
    assert "cog token" in bad.stderr
    assert "not-the-token-canary" not in bad.stderr + bad.stdout
    assert cog_front.token not in ok.stderr + ok.stdout + via_env.stderr


def test_redirected_blobs_get_no_authorization(
    redirect_front: RedirectFront, repo_name: str, tmp_path: Path
) -> None:
    ref = f"{redirect_front.registry.host}/{repo_name}:v1"
    push(ref)

    async def fetch() -> bytes:
        async with RegistryClient() as client:
            image = await client.resolve(parse(f"{redirect_front.host}/{repo_name}:v1"))
            # credentials the registry would accept, offered up front
            auth = client.auth_for(redirect_front.host)
            await auth.prime('Basic realm="test"')
            auth._credential = __import__(
                "r8imfs.registry.credentials", fromlist=["Credential"]
            ).Credential("canary-user", "canary-password")
            layer = image.manifest.layers[-1]
            return await client.get_blob(image.reference.repository, layer.digest)

    redirect_front.blob_requests.clear()
    data = trio.run(fetch)
    assert len(data) > 64 * 1024
    assert redirect_front.blob_requests, "the blob came through the redirect"
    for request in redirect_front.blob_requests:
        assert "authorization" not in request.headers


def test_cli_errors_are_one_line(registry: RegistryServer) -> None:
    cases = [
        (("layers", "Bad/Name"), 2, "'Bad'"),
        (("layers", f"{registry.host}/nope/never:v1"), 1, "not found"),
        (("layers", "127.0.0.1:9/x:v1"), 1, "cannot reach"),
        (("layers", "--platform", "linux", f"{registry.host}/a"), 2, "os/arch"),
    ]
    for args, code, text in cases:
        proc = cli(*args)
        assert proc.returncode == code, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert text in proc.stderr and "Traceback" not in proc.stderr
