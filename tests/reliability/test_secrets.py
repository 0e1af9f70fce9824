"""Secrets stay secret: not in any output at any verbosity, not at a redirect target,
not in the cache.

The canaries are the session registries' own credentials: the random
password of ``basic_registry`` and ``token_registry`` (given through a
docker config) and the cog token of ``cog_front`` (given with ``-t`` or
``COG_TOKEN``), each also searched for in its base64 ``user:secret`` form.
Bearer tokens (JWTs, ``eyJ...``) must not show either.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.images import push
from tests.helpers.registry import CogFront, RegistryServer
from tests.helpers.reliability import (
    clean_env,
    cog_layers,
    mounted,
    one_line_error,
    read_checked,
    run,
)
from tools.faultproxy import FaultProxy, RedirectBlobs

WEIGHTS = {"model.bin": b"w" * 300_000, "config.json": b"{}\n"}


def canaries(user: str, secret: str) -> list[str]:
    return [secret, base64.b64encode(f"{user}:{secret}".encode()).decode(), "eyJ"]


def assert_clean(text: str, secrets: list[str], where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret[:6]}... appears in {where}"


@pytest.fixture(scope="module")
def basic_image(basic_registry: RegistryServer) -> str:
    return _push_with_config(basic_registry, "rel/secret-basic")


@pytest.fixture(scope="module")
def token_image(token_registry: RegistryServer) -> str:
    return _push_with_config(token_registry, "rel/secret-token")


@pytest.fixture(scope="module")
def cog_image(cog_front: CogFront) -> str:
    ref = f"{cog_front.host}/rel/secret-cog:v1"
    push(ref, layers=cog_layers(WEIGHTS), token=cog_front.token)
    return ref


def _push_with_config(server: RegistryServer, repo: str) -> str:
    import json
    import os
    import tempfile

    ref = f"{server.host}/{repo}:v1"
    with tempfile.TemporaryDirectory() as d:
        auth = base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
        Path(d, "config.json").write_text(json.dumps({"auths": {server.host: {"auth": auth}}}))
        old = os.environ.get("DOCKER_CONFIG")
        os.environ["DOCKER_CONFIG"] = d
        try:
            push(ref, layers=cog_layers(WEIGHTS))
        finally:
            if old is None:
                del os.environ["DOCKER_CONFIG"]
            else:
                os.environ["DOCKER_CONFIG"] = old
    return ref


WAYS = ["basic-config", "token-config", "cog-flag", "cog-env"]
CASES = [(how, "-vvv") for how in WAYS] + [("cog-flag", "-v"), ("token-config", "-vv")]


@pytest.mark.parametrize(("how", "verbose"), CASES)
def test_no_output_line_holds_a_secret(
    request: pytest.FixtureRequest,
    docker_config: Callable[..., Path],
    tmp_path: Path,
    how: str,
    verbose: str,
) -> None:
    env = clean_env()
    extra: list[str] = []
    if how in ("basic-config", "token-config"):
        server: RegistryServer = request.getfixturevalue(how.split("-")[0] + "_registry")
        ref = request.getfixturevalue(how.split("-")[0] + "_image")
        docker_config(server)
        env = clean_env()
        secrets = canaries(str(server.username), str(server.password))
    else:
        front: CogFront = request.getfixturevalue("cog_front")
        ref = request.getfixturevalue("cog_image")
        secrets = canaries(front.username, front.token)
        if how == "cog-flag":
            extra = ["-t", front.token]
        else:
            env = clean_env(COG_TOKEN=front.token)
    proc = run(verbose, *extra, "extract", ref, "-o", str(tmp_path / "w.tar"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert_clean(proc.stdout + proc.stderr, secrets, f"the output of extract {verbose}")
    if verbose == "-vvv":
        assert "HTTP" in proc.stderr  # the verbose log was really on


def test_a_refused_token_is_not_echoed(cog_front: CogFront, cog_image: str) -> None:
    wrong = "r8_WRONG" + cog_front.token[::-1]
    proc = run("-t", wrong, "layers", cog_image)
    one_line_error(proc, contains="rejected the cog token")
    assert_clean(proc.stdout + proc.stderr, canaries(cog_front.username, wrong), "the error")
    proc = run("-vv", "-t", wrong, "layers", cog_image)  # with a traceback
    assert_clean(proc.stdout + proc.stderr, canaries(cog_front.username, wrong), "-vv output")


@pytest.fixture
def redirecting(
    basic_registry: RegistryServer, docker_config: Callable[..., Path]
) -> Iterator[FaultProxy]:
    """The basic registry behind a proxy that sends blob GETs to a CDN on another host."""
    p = FaultProxy(basic_registry.host).start()
    p.set_faults([RedirectBlobs(reject_auth=True)])
    docker_config(p.host, basic_registry.username, basic_registry.password)
    yield p
    p.stop()


def test_authorization_never_reaches_the_redirect_host(
    basic_image: str, basic_registry: RegistryServer, redirecting: FaultProxy, tmp_path: Path
) -> None:
    ref = basic_image.replace(basic_registry.host, redirecting.host)
    proc = run("extract", ref, "-o", str(tmp_path / "w.tar"))
    assert proc.returncode == 0, proc.stderr
    cdn = redirecting.cdn_requests
    assert cdn and all("authorization" not in r.headers for r in cdn)
    assert all(r.status in (200, 206) for r in cdn)
    registry_side = [r for r in redirecting.requests if r.server == "proxy"]
    assert any("authorization" in r.headers for r in registry_side)  # auth was in play


@pytest.mark.fuse
def test_mount_and_extract_write_no_secret_to_disk(
    cog_front: CogFront, cog_image: str, tmp_path: Path
) -> None:
    secrets = canaries(cog_front.username, cog_front.token)
    env = clean_env(COG_TOKEN=cog_front.token, XDG_CACHE_HOME=str(tmp_path / "xdg-cache"))
    proc = run("-vvv", "extract", cog_image, "-o", str(tmp_path / "w.tar"), env=env)
    assert proc.returncode == 0, proc.stderr
    # -vvv for the daemon too: its log is a file beside the cache
    with mounted(cog_image, tmp_path, "-vvv", env=env, name="m") as m:
        assert read_checked(m.rootfs / "src/weights/model.bin", WEIGHTS["model.bin"]) == "ok"
    assert "HTTP" in m.stderr and "close.complete" in m.log_text()  # -vvv before and after ready
    assert_clean(m.stderr + proc.stderr, secrets, "the output of mount and extract -vvv")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in written) and m.log.exists()
    for path in written:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"{secret[:6]}... written to {path}"
