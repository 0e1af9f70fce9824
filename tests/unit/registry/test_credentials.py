from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from r8imfs.errors import AuthError
from r8imfs.registry.credentials import config_paths, find


def _write(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def test_auths_entry_base64(tmp_path: Path) -> None:
    auth = base64.b64encode(b"alice:s3cret:with:colons").decode()
    cfg = _write(tmp_path / "config.json", {"auths": {"reg.example:5000": {"auth": auth}}})
    cred = find("reg.example:5000", paths=[cfg])
    assert cred is not None
    assert (cred.username, cred.password) == ("alice", "s3cret:with:colons")
    assert "s3cret" not in repr(cred)


def test_url_style_keys_and_identity_token(tmp_path: Path) -> None:
    cfg = _write(
        tmp_path / "config.json",
        {"auths": {"https://index.docker.io/v1/": {"identitytoken": "refresh-me"}}},
    )
    cred = find("docker.io", paths=[cfg])
    assert cred is not None and cred.identity_token == "refresh-me"


def test_first_file_wins_and_missing_host(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.json", {"auths": {"r": {"username": "u1", "password": "p1"}}})
    b = _write(tmp_path / "b.json", {"auths": {"r": {"username": "u2", "password": "p2"}}})
    cred = find("r", paths=[tmp_path / "absent.json", a, b])
    assert cred is not None and cred.username == "u1"
    assert find("other", paths=[a, b]) is None


def test_cog_token_comes_first(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.json", {"auths": {"r8.im": {"username": "u", "password": "p"}}})
    cred = find("r8.im", cog_token="r8_tok", paths=[a])
    assert cred is not None and cred.cog_token == "r8_tok" and cred.username == ""


def test_invalid_json_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{nope")
    with pytest.raises(AuthError, match="not valid JSON"):
        find("r", paths=[bad])


def _helper(tmp_path: Path, name: str, body: str) -> None:
    exe = tmp_path / "bin" / f"docker-credential-{name}"
    exe.parent.mkdir(exist_ok=True)
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)


def test_cred_helpers_and_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _helper(
        tmp_path,
        "fake",
        'read host; [ "$1" = get ] && '
        'echo "{\\"Username\\":\\"h-$host\\",\\"Secret\\":\\"sec\\"}"\n',
    )
    _helper(tmp_path, "none", "exit 1\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    cfg = _write(tmp_path / "c.json", {"credHelpers": {"reg.a": "fake"}, "credsStore": "none"})
    cred = find("reg.a", paths=[cfg])
    assert cred is not None and (cred.username, cred.password) == ("h-reg.a", "sec")
    assert find("reg.b", paths=[cfg]) is None  # store says "not found"
    missing = _write(tmp_path / "m.json", {"credsStore": "absent-helper"})
    with pytest.raises(AuthError, match="not installed"):
        find("reg.c", paths=[missing])


def test_config_path_order() -> None:
    env = {
        "HOME": "/h",
        "DOCKER_CONFIG": "/d",
        "REGISTRY_AUTH_FILE": "/r/auth.json",
        "XDG_RUNTIME_DIR": "/run/u",
    }
    assert [str(p) for p in config_paths(env)] == [
        "/r/auth.json",
        "/d/config.json",
        "/h/.docker/config.json",
        "/run/u/containers/auth.json",
        "/h/.config/containers/auth.json",
    ]
