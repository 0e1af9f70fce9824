"""Shared fixtures: real registries on loopback (see registry_server.py).

Session-scoped, started on first use and stopped at the end of the run:
``registry`` (open), ``basic_registry``, ``token_registry``, and the fronts
``cog_front`` (over ``basic_registry``) and ``redirect_front`` (over
``registry``). Repositories outlive a test: name yours with ``repo_name``.
``docker_config`` writes credentials where r8imfs looks for them.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.helpers.registry import (
    CogFront,
    RedirectFront,
    RegistryServer,
    start_cog_verify_front,
    start_redirect_front,
    start_registry,
)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path_factory.mktemp("registry-open"), "open")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path_factory.mktemp("registry-basic"), "basic")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path_factory.mktemp("registry-token"), "token")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cog_front(basic_registry: RegistryServer) -> Iterator[CogFront]:
    """r8.im stand-in: ``cog_front.token`` is the cog token, ``.username`` its user."""
    front = start_cog_verify_front(basic_registry)
    yield front
    front.stop()


@pytest.fixture(scope="session")
def redirect_front(registry: RegistryServer) -> Iterator[RedirectFront]:
    """Blob GETs redirect to ``redirect_front.blob_url``; see ``.blob_requests``."""
    front = start_redirect_front(registry)
    yield front
    front.stop()


_counter = iter(range(1_000_000))


@pytest.fixture
def repo_name(request: pytest.FixtureRequest) -> str:
    """A repository name no other test in the session uses."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60] or "t"
    return f"test/{stem}-{next(_counter)}"


class _HasHost(Protocol):
    @property
    def host(self) -> str: ...


WriteDockerConfig = Callable[..., Path]


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WriteDockerConfig:
    """Point DOCKER_CONFIG at a fresh config.json; call to add ``auths`` entries.

    ``docker_config(token_registry)`` stores the server's own credentials;
    ``docker_config("host:port", "user", "pw")`` or
    ``docker_config(server, identitytoken="...")`` store others. Each call
    merges into the same file and returns its path. Other credential
    sources (REGISTRY_AUTH_FILE, XDG_RUNTIME_DIR's auth.json) are hidden.
    """
    directory = tmp_path / "docker-config"
    directory.mkdir()
    path = directory / "config.json"
    path.write_text(json.dumps({"auths": {}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg-runtime"))

    def write(
        target: str | _HasHost,
        username: str | None = None,
        password: str | None = None,
        *,
        identitytoken: str | None = None,
    ) -> Path:
        host = target if isinstance(target, str) else target.host
        username = username or getattr(target, "username", None)
        password = password or getattr(target, "password", None)
        entry: dict[str, str] = {}
        if username is not None and password is not None:
            entry["auth"] = base64.b64encode(f"{username}:{password}".encode()).decode()
        if identitytoken is not None:
            entry["identitytoken"] = identitytoken
        config = json.loads(path.read_text())
        config["auths"][host] = entry
        path.write_text(json.dumps(config, indent=2))
        return path

    return write
