"""A registry that answers nonsense: bad manifests, unknown types, missing blobs,
malformed challenges, and references that cannot be right. One clear line each.

Manifest bodies and headers are rewritten by the fault proxy (the registry
itself validates what it is given); blobs go missing by a real DELETE.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from r8imfs.oci import mediatypes as mt
from tests.helpers.registry import RegistryServer
from tests.helpers.reliability import (
    Image,
    RawLayer,
    clean_env,
    delete_blob,
    is_mounted,
    one_line_error,
    push_blobs,
    run,
    run_here,
    sha256,
    tag_is_whole,
)
from tools.demoimage import tar_of
from tools.faultproxy import FaultProxy, ReplaceBody, SetHeader, Status

QUICK = 30.0
H64 = "a" * 64


def _manifest(**changes: object) -> bytes:
    body: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": f"sha256:{H64}", "size": 2},
        "layers": [{"mediaType": mt.OCI_LAYER_GZIP, "digest": f"sha256:{H64}", "size": 2}],
    }
    body.update(changes)
    return json.dumps(body).encode()


BAD_MANIFESTS: dict[str, tuple[bytes, str, str]] = {
    "not-json": (b"{not json", mt.OCI_MANIFEST, "not valid JSON"),
    "json-array": (b"[]", mt.OCI_MANIFEST, "not a JSON object"),
    "unknown-type": (b'{"schemaVersion": 2, "mediaType": "application/x-odd"}', "x", "unsupported"),
    "schema1": (
        b'{"schemaVersion": 1}',
        "application/vnd.docker.distribution.manifest.v1+json",
        "unsupported",
    ),
    "layers-null": (_manifest(layers=None), mt.OCI_MANIFEST, "malformed"),
    "negative-size": (
        _manifest(config={"digest": f"sha256:{H64}", "size": -5}),
        mt.OCI_MANIFEST,
        "invalid size",
    ),
    "digest-escapes-path": (
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": mt.OCI_MANIFEST,
                        "digest": "../../../v2/other/manifests/x",
                        "size": 1,
                        "platform": {"os": "linux", "architecture": "amd64"},
                    }
                ],
            }
        ).encode(),
        mt.OCI_INDEX,
        "invalid digest",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_MANIFESTS))
def test_bad_manifests_give_one_line(
    image: Image, proxy: FaultProxy, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    body, content_type, words = BAD_MANIFESTS[kind]
    proxy.set_faults([ReplaceBody(body=body, content_type=content_type)])
    one_line_error(run_here(capsys, "layers", image.ref(proxy.host)), contains=words)
    assert not any("/other/" in r.path for r in proxy.requests)


WITH_MOUNT = ["extract", "clone", pytest.param("mount", marks=pytest.mark.fuse)]


def mnt(tmp: Path) -> Path:
    (tmp / "mnt").mkdir(exist_ok=True)
    return tmp / "mnt"


@pytest.mark.parametrize("command", WITH_MOUNT)
def test_bad_manifests_stop_every_command(
    image: Image, proxy: FaultProxy, repo_name: str, tmp_path: Path, command: str
) -> None:
    proxy.set_faults(
        [ReplaceBody(body=BAD_MANIFESTS["digest-escapes-path"][0], content_type=mt.OCI_INDEX)]
    )
    src = image.ref(proxy.host)
    args = {
        "extract": ["extract", src, "-o", str(tmp_path / "w.tar")],
        "clone": ["clone", "--base", src, "--dest", f"{proxy.host}/{repo_name}:c"],
        "mount": ["mount", src, str(mnt(tmp_path)), "--cache-dir", str(tmp_path / "c")],
    }[command]
    one_line_error(run(*args, timeout=QUICK), contains="invalid digest")
    assert not is_mounted(tmp_path / "mnt")
    assert not tag_is_whole(proxy.upstream, repo_name, "c")


# -- layers of an unknown type, blobs that are gone -----------------------------------------


@pytest.fixture
def odd_layer(registry: RegistryServer, repo_name: str) -> str:
    tar = tar_of({"src/weights/a.bin": b"a"})
    ref = f"{registry.host}/{repo_name}:v1"
    push_blobs(ref, [RawLayer(tar, "application/vnd.example.weights.v1+safetensors", sha256(tar))])
    return ref


COMMANDS: dict[str, Callable[[str, str, Path], list[str]]] = {
    "extract": lambda ref, dest, tmp: ["extract", ref, "-o", str(tmp / "w.tar")],
    "zstd": lambda ref, dest, tmp: ["zstd", ref, "--dest", dest],
    "mount": lambda ref, dest, tmp: ["mount", ref, str(mnt(tmp)), "--cache-dir", str(tmp / "c")],
    "clone": lambda ref, dest, tmp: ["clone", "--base", ref, "--dest", dest],
}


@pytest.mark.parametrize("command", WITH_MOUNT[:1] + ["zstd"] + WITH_MOUNT[2:])
def test_unknown_layer_media_type(
    odd_layer: str, registry: RegistryServer, repo_name: str, tmp_path: Path, command: str
) -> None:
    dest = f"{registry.host}/{repo_name}:out"
    proc = run(*COMMANDS[command](odd_layer, dest, tmp_path), timeout=QUICK)
    one_line_error(proc, contains="media type")
    assert not tag_is_whole(registry.host, repo_name, "out")


@pytest.mark.parametrize("command", [*WITH_MOUNT, "zstd"])
def test_a_blob_deleted_behind_the_manifest(
    registry: RegistryServer, repo_name: str, tmp_path: Path, command: str
) -> None:
    tar = tar_of({"src/weights/a.bin": b"gone" * 1000})
    layer = RawLayer(tar, mt.OCI_LAYER, sha256(tar))
    src = f"{registry.host}/{repo_name}/src:v1"
    push_blobs(src, [layer])
    delete_blob(registry.host, f"{repo_name}/src", sha256(tar))
    dest = f"{registry.host}/{repo_name}/dest:out"
    proc = run(*COMMANDS[command](src, dest, tmp_path), timeout=QUICK)
    one_line_error(proc, contains="not found")
    assert not tag_is_whole(registry.host, f"{repo_name}/dest", "out")
    assert not is_mounted(tmp_path / "mnt")


# -- authentication challenges that make no sense ---------------------------------------------


@pytest.fixture
def token_proxy(
    token_registry: RegistryServer, docker_config: Callable[..., Path]
) -> Iterator[FaultProxy]:
    p = FaultProxy(token_registry.host).start()
    docker_config(p.host, token_registry.username, token_registry.password)
    yield p
    p.stop()


CHALLENGES = {
    "no-realm": ("Bearer", "no realm"),
    "empty-realm": ("Bearer realm=", "no realm"),
    "other-scheme": ("Negotiate abc", "cannot use"),
    "ftp-realm": ('Bearer realm="ftp://127.0.0.1/token"', "cannot reach"),
    "dead-realm": ('Bearer realm="http://127.0.0.1:9/token",service="x"', "cannot reach"),
    "unterminated": ('Bearer realm="http://127.0.0.1:9/' + "a" * 5000, "no realm"),
    "megabyte": ("x" * 60000, "cannot use"),
}


@pytest.mark.parametrize("kind", sorted(CHALLENGES))
def test_malformed_www_authenticate(
    token_registry: RegistryServer,
    token_proxy: FaultProxy,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    value, words = CHALLENGES[kind]
    token_proxy.set_faults([SetHeader(header="WWW-Authenticate", value=value)])
    ref = f"{token_proxy.host}/rel/none:v1"
    line = one_line_error(run_here(capsys, "layers", ref), contains=words)
    assert len(line) < 400
    assert token_registry.password and token_registry.password not in line


def test_a_challenge_when_no_credentials_exist(
    registry: RegistryServer, proxy: FaultProxy, image: Image
) -> None:
    """401 from a registry we have no credentials for: the hint says how to give them."""
    proxy.set_faults(
        [
            Status(code=401, match="/manifests/"),
            SetHeader(header="WWW-Authenticate", value='Basic realm="x"'),
        ]
    )
    one_line_error(run("layers", image.ref(proxy.host), timeout=QUICK), contains="docker login")


# -- references -------------------------------------------------------------------------------

BAD_REFERENCES = [
    "UPPER/case:v1",
    "a:b:c",
    "",
    "repo@sha256:abc",
    "repo@sha256:" + "g" * 64,
    "repo:" + "t" * 200,
    "../escape",
    "http://host/repo",
    "repo:tag with space",
]


@pytest.mark.parametrize("text", BAD_REFERENCES, ids=[f"r{i}" for i in range(len(BAD_REFERENCES))])
def test_invalid_references_are_usage_errors(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    proc = run_here(capsys, "layers", text)
    one_line_error(proc)
    assert proc.returncode == 2


def test_invalid_destination_reference(
    image: Image, registry: RegistryServer, capsys: pytest.CaptureFixture[str]
) -> None:
    proc = run_here(capsys, "clone", "--base", image.ref(registry.host), "--dest", "Bad Name")
    one_line_error(proc)
    assert proc.returncode == 2


def test_a_garbled_docker_config_is_one_line(
    image: Image, registry: RegistryServer, tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_text("{garbled")
    env = clean_env(DOCKER_CONFIG=str(tmp_path))
    one_line_error(run("layers", image.ref(registry.host), env=env), contains="not valid JSON")
    bad_auth = {"auths": {registry.host: {"auth": base64.b64encode(b"\xff\xfe").decode() + "!"}}}
    (tmp_path / "config.json").write_text(json.dumps(bad_auth))
    proc = run("layers", image.ref(registry.host), env=env)
    assert "Traceback" not in proc.stderr
