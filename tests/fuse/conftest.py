"""FUSE tests: every test under tests/fuse is marked ``fuse``, and skipped with
the reason where this machine cannot mount FUSE. The helpers (mounting, the
reference root filesystem, tree snapshots) live in ``fusekit``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests.helpers.fuse import HERE, Mount, MountFactory, fuse_missing, mount_image


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = fuse_missing()
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.fuse)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def mounted(tmp_path: Path) -> MountFactory:
    """``with mounted(ref, *extra, name=..., cache_dir=...) as m:`` under ``tmp_path``."""

    def factory(ref: str, *extra: str, **kw: object) -> AbstractContextManager[Mount]:
        return mount_image(ref, tmp_path, *extra, **kw)  # type: ignore[arg-type]

    return factory
