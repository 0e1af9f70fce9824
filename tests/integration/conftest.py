"""Fixtures shared by the integration tests of the commands that write images."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.counting_proxy import CountingProxy, start_counting_proxy
from tests.helpers.registry import RegistryServer


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[CountingProxy]:
    """A byte-counting proxy in front of the open registry."""
    p = start_counting_proxy(registry.host)
    yield p
    p.stop()
