"""Mount lifecycle: serve an ``ImageFiles`` at a mountpoint until unmounted.

``serve`` mounts (``ro`` unless given an upper directory, ``default_permissions``,
fsname ``r8imfs``), calls ``ready()`` once the kernel has the mount, runs
pyfuse3's main loop (many request tasks, so reads proceed in parallel) and
returns when the mount goes away: ``r8imfs umount``/``fusermount3 -u`` ends
the loop from outside; SIGINT/SIGTERM end it from inside and unmount. A pid
file per mountpoint lets ``umount`` wait for the daemon to be gone.

pyfuse3, trio and the request handlers are imported by ``serve`` only:
``umount``, ``commit`` and the checks before a mount use the helpers here, and
no command but ``mount`` should pay for loading them at start-up.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from r8imfs.errors import MountError, UsageError

if TYPE_CHECKING:
    import trio

    from r8imfs.engine.upper import UpperDir
    from r8imfs.image.image import ImageFiles

FSNAME = "r8imfs"
log = logging.getLogger("r8imfs.fs")


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = Path(base) / f"r8imfs-{os.getuid()}" / "mounts"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def pid_file(mountpoint: str | os.PathLike[str]) -> Path:
    """Where the daemon serving ``mountpoint`` (an absolute, resolved path) keeps its pid."""
    key = hashlib.sha256(os.fsencode(os.path.abspath(mountpoint))).hexdigest()[:24]
    return runtime_dir() / f"{key}.pid"


def resolved(mountpoint: str | os.PathLike[str]) -> str:
    """``mountpoint`` with its parents' symlinks resolved, without a stat of itself."""
    head, tail = os.path.split(os.path.abspath(mountpoint))
    return os.path.join(os.path.realpath(head), tail)


def mounted_fstype(mountpoint: str | os.PathLike[str]) -> str | None:
    """The filesystem type mounted exactly at ``mountpoint`` (from mountinfo).

    Only the path's parents are resolved, never the mountpoint itself: a
    FUSE mount whose daemon is not answering would hang a ``stat`` of it.
    """
    found = _mountinfo(mountpoint)
    return found[1] if found else None


def _mountinfo(mountpoint: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(``major:minor``, fstype) of the last mount exactly at ``mountpoint``."""
    real = resolved(mountpoint)
    found = None
    try:
        lines = os.fsdecode(Path("/proc/self/mountinfo").read_bytes()).splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) > 4 and _unescape(fields[4]) == real:
            found = (fields[2], right.split()[0])
    return found


#: Kernel readahead for the mount, in KiB. The default (128) makes a
#: sequential reader's page-cache misses 128 KiB FUSE requests; at 1 MiB a
#: copy out of a decoded copy ran 4x faster (1 GiB: 1.5 s -> 0.4 s;
#: docs/benchmarks.md), the per-request cost of the FUSE round trip being
#: what bounds it. But it is also the mmap fault read-around: a page fault
#: asks for this much around it, so ``safe_open`` listing a model's keys
#: read (and fetched) 1 MiB of the file. At 512 KiB that is half, and on
#: kernel 6.18 a 512 MiB file copied no slower than at 1024 (A/B, load 5-9:
#: ``cat`` of a decoded copy 0.49-0.88 s at 1024, 0.55-1.02 s at 512,
#: 0.41-0.70 s at 128; ``cp`` of a plain layer, cold, 5.1-6.6 s before and
#: 5.2-5.8 s after this change with 256 KiB plain units).
READ_AHEAD_KB = 512


async def _widen_readahead_once_serving(mountpoint: str, initialized: trio.Event) -> None:
    # The kernel caps the mount's readahead when it gets our reply to FUSE_INIT
    # (at its max_readahead), which libfuse sends as soon as the ``init`` handler
    # returns, on this loop: by the time a task that ``init`` woke runs, the
    # reply is out, and what we set stays. Not a
    # ``stat`` of the mountpoint from a thread here: that is a request to this
    # very process, and a daemon SIGKILLed while one was in flight could never
    # exit (its thread waits, unkillable, for a reply only its own loop could
    # have sent, and the mount hangs with it).
    import trio  # (only the daemon loads trio, not umount)

    from r8imfs import _threads

    await initialized.wait()
    await trio.lowlevel.checkpoint()

    with contextlib.suppress(OSError):
        await _threads.run_io(widen_readahead, mountpoint)


def widen_readahead(mountpoint: str | os.PathLike[str], kib: int = READ_AHEAD_KB) -> bool:
    """Set the mount's readahead (``/sys/class/bdi/<dev>/read_ahead_kb``).

    Needs root; elsewhere the kernel default stays (and False is returned).
    """
    found = _mountinfo(mountpoint)
    if found is None or not re.fullmatch(r"\d+:\d+", found[0]):
        return False
    try:
        Path(f"/sys/class/bdi/{found[0]}/read_ahead_kb").write_text(f"{kib}\n")
    except OSError as exc:
        log.info("kernel readahead left at its default: %s", exc)
        return False
    return True


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as ``\\ooo`` (octal)."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), path)


def check_mountpoint(mountpoint: str) -> None:
    if mounted_fstype(mountpoint) is not None:
        raise UsageError(
            f"{mountpoint} is already a mount point", hint=f"r8imfs umount {mountpoint} first"
        )
    if not os.path.lexists(mountpoint):
        raise UsageError(f"mountpoint {mountpoint} does not exist", hint=f"mkdir -p {mountpoint}")
    if not Path(mountpoint).is_dir():
        raise UsageError(f"mountpoint {mountpoint} is not a directory")
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: this machine cannot mount FUSE filesystems")


async def serve(
    files: ImageFiles,
    mountpoint: str,
    *,
    allow_other: bool = False,
    ready: Callable[[], None] = lambda: None,
    upper: UpperDir | None = None,
    keep_cache: bool = False,
) -> None:
    import pyfuse3
    import trio

    from r8imfs import _threads
    from r8imfs.fs.handlers import ImageOperations
    from r8imfs.fs.pagecache import DropBehind, KernelPages
    from r8imfs.fs.writable import WritableOperations

    # Resolve paths before mounting: once mounted, touching the mountpoint
    # would wait for this very process to answer, which it cannot yet.
    mountpoint = resolved(mountpoint)
    pids = pid_file(mountpoint)
    # writable: rootfs/ over the upper directory (fs/writable.py); the rest stays read-only
    ops = ImageOperations(files) if upper is None else WritableOperations(files, upper)
    options = set(pyfuse3.default_options) | {f"fsname={FSNAME}", f"subtype={FSNAME}"}
    if upper is None:
        options.add("ro")
    if allow_other:
        options.add("allow_other")
    try:
        pyfuse3.init(ops, mountpoint, options)
    except RuntimeError as exc:
        raise MountError(f"cannot mount at {mountpoint}: {exc}") from exc
    # a big file read once is dropped from the page cache behind its reader
    pages = None if keep_cache or upper is not None else KernelPages.of_this_process()
    if pages is not None:
        ops.pages = DropBehind(pages.drop)
    stopped_by_signal = False
    try:
        pids.write_text(f"{os.getpid()}\n")
        ready()
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                nonlocal stopped_by_signal
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        stopped_by_signal = True
                        if pages is not None:
                            # while the loop still answers reads: a drop in
                            # flight may wait on a page under one, and the
                            # unmount below would wait on that drop
                            await _threads.run_io(pages.close)
                        pyfuse3.terminate()
                        return

            nursery.start_soon(on_signal)
            nursery.start_soon(_widen_readahead_once_serving, mountpoint, ops.initialized)
            await pyfuse3.main(min_tasks=4, max_tasks=64)
            nursery.cancel_scope.cancel()
    finally:
        pids.unlink(missing_ok=True)
        if pages is not None:
            pages.close()
        pyfuse3.close(unmount=stopped_by_signal or mounted_fstype(mountpoint) is not None)


def unmount(mountpoint: str) -> None:
    """Ask the kernel to unmount (fusermount3 -u, or umount(8) as a fallback)."""
    for cmd in (["fusermount3", "-u", mountpoint], ["umount", mountpoint]):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        except FileNotFoundError:
            continue
        if proc.returncode == 0:
            return
        last = proc.stderr.strip()
    else:
        last = locals().get("last", "no fusermount3 or umount found")
    raise MountError(f"cannot unmount {mountpoint}: {last}")


def daemon_pid(mountpoint: str) -> int | None:
    try:
        return int(pid_file(mountpoint).read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


__all__ = ["MountError", "serve", "unmount", "check_mountpoint", "daemon_pid", "alive", "errno"]
