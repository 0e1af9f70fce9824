"""The mount's readahead is widened once the kernel has our FUSE_INIT reply,
without the daemon ever sending a request to its own mount.

(It used to ``stat`` the mountpoint from a worker thread to know INIT was
done: a daemon SIGKILLed while that request was in flight could not exit,
its thread waiting, unkillable, for a reply only its own loop could send.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

from r8imfs.fs import daemon


async def test_widening_waits_for_init_and_never_touches_the_mount(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mountpoint = str(tmp_path / "mnt")
    widened: list[str] = []
    touched: list[str] = []
    real_stat = os.stat

    def spy_stat(path: object, *a: object, **kw: object) -> os.stat_result:
        touched.append(str(path))
        return real_stat(path, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", spy_stat)

    def widen(m: str) -> bool:
        widened.append(m)
        return True

    monkeypatch.setattr(daemon, "widen_readahead", widen)
    initialized = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon._widen_readahead_once_serving, mountpoint, initialized)
        await trio.testing.wait_all_tasks_blocked()
        assert widened == []  # not before the kernel has our INIT reply
        initialized.set()
    assert widened == [mountpoint]
    assert not [p for p in touched if p.startswith(mountpoint)]
