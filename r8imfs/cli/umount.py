"""``r8imfs umount MOUNTPOINT``: unmount and wait for the daemon to exit."""

from __future__ import annotations

import argparse
from typing import Any

import trio

from r8imfs import _threads
from r8imfs.cli import _common
from r8imfs.errors import UsageError
from r8imfs.fs import daemon

WAIT = 30.0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "umount",
        aliases=["unmount"],
        help="unmount an r8imfs mount and wait for its daemon to exit",
    )
    p.add_argument("mountpoint", help="where the image is mounted")
    p.set_defaults(run=run)
    return p


async def run(args: argparse.Namespace) -> None:
    fstype = daemon.mounted_fstype(args.mountpoint)
    if fstype is None:
        raise UsageError(f"{args.mountpoint} is not mounted")
    if fstype != f"fuse.{daemon.FSNAME}":
        raise UsageError(f"{args.mountpoint} is a {fstype} mount, not an r8imfs one")
    pid = daemon.daemon_pid(daemon.resolved(args.mountpoint))
    await _threads.run_io(daemon.unmount, args.mountpoint)
    if pid is None:
        return
    if not daemon.alive(pid):  # it died without cleaning up (SIGKILL, a crash)
        daemon.pid_file(daemon.resolved(args.mountpoint)).unlink(missing_ok=True)
        return
    with trio.move_on_after(WAIT) as scope:
        # another process: there is no event to wait on, so poll
        while daemon.alive(pid):  # noqa: ASYNC110
            await trio.sleep(0.05)
    if scope.cancelled_caught:
        _common.note(args, f"unmounted; the daemon (pid {pid}) is still finishing")
