"""What a writable mount's daemon leaves for ``commit`` and ``umount`` to find.

Beside the daemon's pid file (``daemon.pid_file``, keyed by the resolved
mountpoint) a ``.json`` names the upper directory and the image. The daemon
writes it once mounted and removes it when it exits cleanly; after a crash
or SIGKILL it stays, so the changes of a dead mount can still be committed
(the upper directory is self-contained) and ``umount`` can say where they are.
A read-only mount has no such file.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from r8imfs.fs.daemon import pid_file


@dataclass(frozen=True, slots=True)
class MountState:
    upper: Path
    image: str
    owned: bool = True  # chosen by r8imfs (in the cache), not given with --upper


def state_file(mountpoint: str) -> Path:
    """For ``mountpoint`` resolved (``daemon.resolved``)."""
    return pid_file(mountpoint).with_suffix(".json")


def write(mountpoint: str, state: MountState) -> None:
    path = state_file(mountpoint)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"upper": str(state.upper), "image": state.image, "owned": state.owned})
    )
    os.replace(tmp, path)


def read(mountpoint: str) -> MountState | None:
    try:
        data = json.loads(state_file(mountpoint).read_text())
        return MountState(Path(data["upper"]), str(data["image"]), bool(data.get("owned", True)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove(mountpoint: str) -> None:
    with contextlib.suppress(OSError):
        state_file(mountpoint).unlink()
