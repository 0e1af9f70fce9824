"""The mount daemon as a process: fork, parent death, malloc bounds, detaching.

Like sshfs, ``r8imfs mount`` returns only once the filesystem is mounted and
serving, then leaves a daemon behind. ``fork_daemon`` forks before any trio
or thread exists: the parent waits on a pipe for the child's "ready" (exit
0) or for the pipe to close (the child's exit status, whose error line it
already printed). The child makes a session of its own, mounts, says ready
(``detach``), and only then lets go of the terminal. Linux only; the libc
calls (``prctl``, ``mallopt``) are best effort.
"""

from __future__ import annotations

import ctypes
import os
import signal
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
M_TRIM_THRESHOLD = -1


@dataclass(frozen=True, slots=True)
class Forked:
    """What ``fork_daemon`` returns: in the child, the fd to say ready on;
    in the parent, the exit code to leave with (and the signal that killed
    the child before it could say why itself, if one did)."""

    ready_fd: int | None = None
    exit_code: int | None = None
    killed_by: str | None = None


def fork_daemon() -> Forked:
    """Fork; the child returns at once, the parent once the child is ready or gone."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        os.setsid()
        # Until it says ready, the child lives only as long as the waiting
        # parent: Ctrl-C or a timeout that kills the parent takes it along.
        die_with_parent(signal.SIGTERM)
        if os.getppid() == 1:
            os._exit(1)
        return Forked(ready_fd=write_fd)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        said = pipe.read()
    if said.startswith(b"ready"):
        return Forked(exit_code=0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # killed: it could not say why itself
        return Forked(exit_code=128 - code, killed_by=signal.Signals(-code).name)
    return Forked(exit_code=code or 1)


def bound_malloc(keep_free: int = 0, mmap_threshold: int = 16 * 1024 * 1024) -> None:
    """Keep the daemon's memory near what it uses (glibc ``mallopt``, best effort).

    Multi-MiB buffers churn through worker threads: glibc's per-thread arenas
    and its sliding mmap threshold (up to 32 MiB) keep freed ones as resident
    heap. Two arenas and a fixed 16 MiB threshold cut the daemon's peak RSS
    by a fifth while copying a 300 MiB gzip file, at no speed cost; a 1 MiB
    threshold cut it by 40% but made the copy 25% slower (mmap per block).
    Call it before any thread exists, in the process that will serve.

    ``keep_free``: free memory at the top of a heap kept for reuse, up to
    this many bytes. A fixed mmap threshold leaves glibc's trim threshold at
    128 KiB, so a heap that shrinks by a freed 1 MiB buffer is handed back
    to the kernel and faulted in again, zeroed, for the next: ``extract``
    took 170,000 page faults and ~0.5 s of system time per GiB for that.
    Peak RSS is unchanged (what is kept was in use a moment before).

    ``mmap_threshold``: allocations this big or bigger get pages of their own
    (``mmap``), fresh from the kernel and zeroed on first touch each time. The
    mount's ranged GETs are 16 MiB buffers, just over the default: with 32 MiB
    here (and 64 MiB ``keep_free``) a ``cp`` of 1 GiB through a SOCI mount took
    the daemon from ~190,000 page faults to ~55,000, its system time from
    ~1.1 to ~0.85 s, the ``cp`` ~4% faster, peak RSS the same (220-250 MB).
    The zstd layers' GETs are 32 MiB since: the mount passes 64 MiB, so that they
    too come from the heap, and keeps 128 MiB free (two of them freed at the
    heap's top would otherwise be trimmed): a zstd ``cp`` took ~110,000-150,000
    faults per GiB with either left as it was, ~50,000 with both. Its peak RSS
    went 165-180 -> 210-235 MB (the bigger GETs); a SOCI ``cp``'s stayed at
    213-230 MB. On a VM whose free memory goes back to the host
    (virtio-balloon free page reporting: docs/benchmarks.md) a fresh page
    costs several times more.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)
        libc.mallopt(M_ARENA_MAX, 2)
        if keep_free:
            libc.mallopt(M_TRIM_THRESHOLD, keep_free)
    except (OSError, AttributeError):
        pass


def die_with_parent(sig: int) -> None:
    """``prctl(PR_SET_PDEATHSIG, sig)``; 0 clears it. Linux only, best effort."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def detach(ready_fd: int, log: Path) -> None:
    """Say ready to the waiting parent; send our output to ``log`` from now on."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1):
        os.dup2(null, target)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)
    die_with_parent(0)  # from now on the daemon outlives the command
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)
