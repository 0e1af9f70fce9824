from __future__ import annotations

import pytest

from r8imfs.errors import AuthError
from r8imfs.registry.challenge import parse_www_authenticate, pick, scopes_for_request


def test_bearer_challenge() -> None:
    (c,) = parse_www_authenticate(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:samalba/my-app:pull,push"'
    )
    assert c.scheme == "bearer"
    assert c.realm == "https://auth.docker.io/token"
    assert c.params["service"] == "registry.docker.io"
    assert c.params["scope"] == "repository:samalba/my-app:pull,push"


def test_basic_and_escapes_and_unquoted() -> None:
    (c,) = parse_www_authenticate('Basic realm="a \\"quoted\\" realm", charset=UTF-8')
    assert c.scheme == "basic"
    assert c.realm == 'a "quoted" realm'
    assert c.params["charset"] == "UTF-8"


def test_several_challenges_prefer_bearer() -> None:
    cs = parse_www_authenticate('Basic realm="r", Bearer realm="https://t/token",service="s"')
    assert [c.scheme for c in cs] == ["basic", "bearer"]
    assert pick(cs).scheme == "bearer"


@pytest.mark.parametrize(
    "header",
    ["", "Negotiate abcdef==", 'Bearer service="x"', "!!!", 'Digest realm="x"'],
)
def test_unusable_challenges_are_auth_errors(header: str) -> None:
    with pytest.raises(AuthError):
        parse_www_authenticate(header)


@pytest.mark.parametrize(
    ("method", "path", "params", "scopes"),
    [
        ("GET", "/v2/a/b/manifests/latest", {}, ("repository:a/b:pull",)),
        ("HEAD", "/v2/a/blobs/sha256:x", {}, ("repository:a:pull",)),
        ("PUT", "/v2/a/b/manifests/v1", {}, ("repository:a/b:pull,push",)),
        (
            "POST",
            "/v2/dst/blobs/uploads/",
            {"mount": "sha256:x", "from": "src/repo"},
            ("repository:dst:pull,push", "repository:src/repo:pull"),
        ),
        ("GET", "/v2/", {}, ()),
        ("GET", "/v2/_catalog", {}, ()),
    ],
)
def test_scopes_for_request(
    method: str, path: str, params: dict[str, str], scopes: tuple[str, ...]
) -> None:
    assert scopes_for_request(method, path, params) == scopes
