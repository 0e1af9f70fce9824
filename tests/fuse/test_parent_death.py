"""A mount that never got ready dies with the command that started it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _pids_with(needle: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if needle.encode() in cmd:
                out.append(int(entry.name))
    return out


def test_killed_parent_takes_the_unready_daemon_along(tmp_path: Path) -> None:
    # a "registry" that accepts connections and never answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        mnt = tmp_path / "mnt-parent-death"
        mnt.mkdir()
        parent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "r8imfs",
                "mount",
                f"127.0.0.1:{port}/x:v1",
                str(mnt),
                "--cache-dir",
                str(tmp_path / "c"),
            ],
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while len(_pids_with(str(mnt))) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(_pids_with(str(mnt))) == 2, "parent and forked child are running"
            os.kill(parent.pid, signal.SIGKILL)
            parent.wait(timeout=10)
            deadline = time.monotonic() + 10
            while _pids_with(str(mnt)) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _pids_with(str(mnt)) == []
        finally:
            for pid in _pids_with(str(mnt)):
                os.kill(pid, signal.SIGKILL)
