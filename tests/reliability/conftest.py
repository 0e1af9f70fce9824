"""Reliability suite (issue 5): faults, hostile input, secrets, load.

Fixtures: ``proxy`` is a fresh ``tools.faultproxy.FaultProxy`` in front of
the session ``registry`` (no faults until a test sets some); ``image`` is a
small cog-like image pushed once per module, with its files known. Tests
that mount are marked ``fuse`` and skipped where FUSE is unusable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from imagehelpers import push
from registry_server import RegistryServer
from relkit import fuse_missing

from tools.demoimage import tar_of
from tools.faultproxy import FaultProxy

MiB = 1024 * 1024


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = fuse_missing()
    for item in items:
        if item.get_closest_marker("fuse") and reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def no_cog_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials only where a test gives them (CLI runs in this process read the env)."""
    monkeypatch.delenv("COG_TOKEN", raising=False)


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    p = FaultProxy(registry.host).start()
    yield p
    p.stop()


@dataclass(frozen=True)
class Image:
    repo: str  # repository path on the registry (no host)
    tag: str
    weights: dict[str, bytes]  # src/weights/... name → body
    layer_digests: tuple[str, ...]
    weights_digest: str  # the weights layer's blob digest

    def ref(self, host: str) -> str:
        return f"{host}/{self.repo}:{self.tag}"


def cog_layers(weights: dict[str, bytes]) -> list[tuple[bytes, str, str | None]]:
    return [
        (tar_of({"etc": None, "etc/os-release": b"ID=test\n"}), "ADD rootfs /", None),
        (tar_of({"src": None, "src/predict.py": b"print('hi')\n"}), "COPY . /src", "cog"),
        (
            tar_of({"src/weights": None, **{f"src/weights/{k}": v for k, v in weights.items()}}),
            "COPY w /src/weights # weights",
            "weights",
        ),
    ]


def push_image(
    registry: RegistryServer, repo: str, weights: dict[str, bytes], **kw: object
) -> Image:
    from relkit import manifest_of

    ref = f"{registry.host}/{repo}:v1"
    push(ref, layers=cog_layers(weights), **kw)
    layers = tuple(d["digest"] for d in manifest_of(ref)["layers"])
    return Image(repo, "v1", weights, layers, layers[-1])


@pytest.fixture(scope="module")
def image(registry: RegistryServer, request: pytest.FixtureRequest) -> Image:
    """3 layers, gzip; weights: model.bin (3 MiB, random) and config.json."""
    weights = {"model.bin": os.urandom(3 * MiB), "config.json": b'{"hidden": 64}\n'}
    return push_image(registry, f"rel/{request.module.__name__.lower()}", weights)
