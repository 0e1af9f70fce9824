"""Reliability suite (issue 5): faults, hostile input, secrets, load.

Fixtures: ``proxy`` is a fresh ``tools.faultproxy.FaultProxy`` in front of
the session ``registry`` (no faults until a test sets some); ``image`` is a
small cog-like image pushed once per module, with its files known. Tests
that mount are marked ``fuse`` and skipped where FUSE is unusable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.helpers.registry import RegistryServer
from tests.helpers.reliability import Image, fuse_missing, push_image
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


@pytest.fixture(scope="module")
def image(registry: RegistryServer, request: pytest.FixtureRequest) -> Image:
    """3 layers, gzip; weights: model.bin (3 MiB, random) and config.json."""
    weights = {"model.bin": os.urandom(3 * MiB), "config.json": b'{"hidden": 64}\n'}
    return push_image(registry, f"rel/{request.module.__name__.lower()}", weights)
