from __future__ import annotations

import pytest

from r8imfs.errors import InvalidReference
from r8imfs.oci.reference import is_loopback, parse, parse_repository

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "name", "tag", "digest"),
    [
        ("ubuntu", "r8.im", "ubuntu", "latest", None),
        ("user/model", "r8.im", "user/model", "latest", None),
        ("user/model:v1", "r8.im", "user/model", "v1", None),
        ("r8.im/user/model@" + D, "r8.im", "user/model", None, D),
        ("r8.im/user/model:v1@" + D, "r8.im", "user/model", "v1", D),
        ("localhost/a", "localhost", "a", "latest", None),
        ("localhost:5000/a/b:c", "localhost:5000", "a/b", "c", None),
        ("127.0.0.1:5000/a", "127.0.0.1:5000", "a", "latest", None),
        ("[::1]:5000/a", "[::1]:5000", "a", "latest", None),
        ("docker.io/ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("docker.io/user/img:1.0", "docker.io", "user/img", "1.0", None),
        ("ghcr.io/o/r/deep/name:t_1", "ghcr.io", "o/r/deep/name", "t_1", None),
        ("a__b/c-d.e", "r8.im", "a__b/c-d.e", "latest", None),
    ],
)
def test_parse(text: str, registry: str, name: str, tag: str | None, digest: str | None) -> None:
    ref = parse(text)
    assert (ref.registry, ref.name, ref.tag, ref.digest) == (registry, name, tag, digest)


def test_default_registry_and_docker_hub_api_host() -> None:
    assert parse("x/y", "example.com:443").registry == "example.com:443"
    assert parse("docker.io/ubuntu").repository.api_host == "registry-1.docker.io"
    assert parse("r8.im/a").repository.api_host == "r8.im"


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("", "empty"),
        ("User/Model", "'User'"),
        ("a/b:", "tag"),
        ("a/b:-bad", "'-bad'"),
        ("a/b@sha256:123", "digest"),
        ("a//b", "component ''"),
        ("bad_host!.com/x", "host"),
        (" a", "spaces"),
        ("a/b:" + "t" * 129, "tag"),
    ],
)
def test_invalid_names_the_bad_part(text: str, part: str) -> None:
    with pytest.raises(InvalidReference, match=part.replace("(", r"\(")):
        parse(text)


def test_str_round_trip() -> None:
    for text in ("r8.im/a/b:v1", "localhost:5000/x@" + D, "ghcr.io/o/r:t@" + D):
        assert str(parse(text)) == text


def test_destination_without_tag_has_no_tag() -> None:
    assert parse_repository("r8.im/a/b").tag is None
    assert parse_repository("r8.im/a/b:v2").tag == "v2"
    assert parse_repository("localhost:5000/a").tag is None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.5.6.7", True),
        ("[::1]:5000", True),
        ("r8.im", False),
        ("10.0.0.1:5000", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected
