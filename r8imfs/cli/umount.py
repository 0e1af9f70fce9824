"""``r8imfs umount MOUNTPOINT``: unmount and wait for the daemon to exit.

A writable mount's upper directory outlives it unless every change in it
was committed (then one r8imfs chose in the cache is removed) or
``--discard`` drops it; otherwise umount says where the changes are kept.
"""

from __future__ import annotations

import argparse
import os
import select
import time
from typing import Any

from r8imfs.cli import _common
from r8imfs.engine.upper import UpperDir
from r8imfs.errors import UsageError
from r8imfs.fs import daemon, mountstate

WAIT = 30.0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "umount",
        aliases=["unmount"],
        help="unmount an r8imfs mount and wait for its daemon to exit",
    )
    p.add_argument("mountpoint", help="where the image is mounted")
    p.add_argument(
        "--discard",
        action="store_true",
        help="writable mounts: delete the changes that were not committed",
    )
    # no registry, nothing to overlap: plain calls, without trio (a quick start)
    p.set_defaults(run_sync=run)
    return p


def run(args: argparse.Namespace) -> None:
    fstype = daemon.mounted_fstype(args.mountpoint)
    if fstype is None:
        raise UsageError(f"{args.mountpoint} is not mounted")
    if fstype != f"fuse.{daemon.FSNAME}":
        raise UsageError(f"{args.mountpoint} is a {fstype} mount, not an r8imfs one")
    where = daemon.resolved(args.mountpoint)
    state = mountstate.read(where)
    if _unmount(args, where):
        _changes(args, state)
        mountstate.remove(where)
    elif state is not None:
        _common.note(args, f"the changes stay in {state.upper} until the daemon has exited")


def _unmount(args: argparse.Namespace, where: str) -> bool:
    """Unmount; True once no daemon serves it any more."""
    pid = daemon.daemon_pid(where)
    daemon.unmount(args.mountpoint)
    if pid is None:
        return True
    if not daemon.alive(pid):  # it died without cleaning up (SIGKILL, a crash)
        daemon.pid_file(where).unlink(missing_ok=True)
        return True
    if not _gone(pid, WAIT):
        _common.note(args, f"unmounted; the daemon (pid {pid}) is still finishing")
        return False
    return True


def _gone(pid: int, timeout: float) -> bool:
    """Whether the daemon exited within ``timeout`` seconds. Not our child: a
    pidfd (Linux 5.3+) turns readable the moment it exits; without one, poll."""
    deadline = time.monotonic() + timeout
    try:
        fd: int | None = os.pidfd_open(pid)
    except (OSError, AttributeError):  # gone already, or no pidfds here
        fd = None
    try:
        while daemon.alive(pid):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if fd is None:
                time.sleep(min(0.05, left))
            else:  # and look again, whatever woke us
                select.select([fd], [], [], min(0.5, left))
        return True
    finally:
        if fd is not None:
            os.close(fd)


def _changes(args: argparse.Namespace, state: mountstate.MountState | None) -> None:
    """What becomes of a writable mount's upper directory, said in one line."""
    if state is None:
        if args.discard:
            _common.note(args, "a read-only mount: nothing to discard")
        return
    upper = UpperDir(state.upper)
    if not upper.root.exists():
        return
    if args.discard:
        upper.discard()
        _common.note(args, f"discarded the changes in {upper.root}")
    elif upper.uncommitted():
        _common.note(
            args,
            f"uncommitted changes are kept in {upper.root} (`r8imfs mount --upper "
            f"{upper.root} {state.image} MOUNTPOINT` resumes them; `rm -r` drops them)",
        )
    elif state.owned:
        upper.discard()  # all committed: nothing left worth keeping in the cache
    elif upper.has_changes():
        _common.note(args, f"all changes committed; {upper.root} is kept (your --upper)")
