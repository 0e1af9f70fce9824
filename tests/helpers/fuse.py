"""Helpers of the FUSE tests: real mounts, an independent reference rootfs, tars.

``fuse_missing()`` says why this machine cannot mount FUSE (no /dev/fuse, or
no fusermount3), or None.

``mount_image(ref, workdir, *extra)`` runs ``python -m r8imfs mount`` in
daemon mode with a cache directory, a log file and an ``XDG_RUNTIME_DIR``
(where the daemon keeps its pid file) of its own, yields a ``Mount``, and
always unmounts in ``finally``: ``r8imfs umount``, then ``fusermount3 -uz``,
then ``umount -l``, then SIGKILL for a daemon still around. The ``mounted``
fixture is the same bound to the test's ``tmp_path``. Every subprocess has a
timeout, so a daemon that stops answering fails a test instead of hanging it.

``build_reference(layers, dest)`` is the expected root filesystem, made
without any r8imfs code: each layer tar extracted with ``tarfile`` in order,
with the OCI whiteout rules (image-spec layer.md) applied by hand: opaque
markers first, then whiteouts (both only touch lower layers), then the
layer's own entries, a directory over a directory merging and anything else
replacing. PAX ``SCHILY.xattr.*`` records are kept in a dict by path, since
extraction does not set them.

``make_tar([Member(...), ...])`` builds the layer tars the tests push:
files, directories, symlinks, hardlinks, PAX records, owners, modes.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

HERE = Path(__file__).resolve().parents[1] / "fuse"  # tests/fuse, where the FUSE tests live
MOUNT_TIMEOUT = 60.0
UMOUNT_TIMEOUT = 30.0
CMD_TIMEOUT = 60.0


# -- skipping where FUSE is absent ------------------------------------------------


def fuse_missing() -> str | None:
    """Why this machine cannot run the FUSE tests, or None if it can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is absent: this machine (or container) cannot mount FUSE"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian/Ubuntu: apt-get install fuse3)"
    return None


# -- the kernel's view -------------------------------------------------------------


def _unescape(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field_)


def mounts() -> dict[str, str]:
    """Mount point → filesystem type, from /proc/self/mountinfo (last one wins)."""
    out = {}
    for line in os.fsdecode(Path("/proc/self/mountinfo").read_bytes()).splitlines():
        left, _, right = line.partition(" - ")
        out[_unescape(left.split()[4])] = right.split()[0]
    return out


def is_mounted(path: Path) -> bool:
    return str(path) in mounts()


def daemons_for(mountpoint: Path) -> list[int]:
    """Live processes whose command line names ``mountpoint`` (the mount daemon)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.fsencode(mountpoint) in argv and b"mount" in argv and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def alive(pid: int) -> bool:
    """Running and not a zombie (the daemon is reparented; nobody may reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# -- mounting ---------------------------------------------------------------------


def r8imfs(
    *args: str, env: dict[str, str] | None = None, timeout: float = CMD_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "r8imfs", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


@dataclass
class Mount:
    path: Path  # the mountpoint
    cache_dir: Path
    log: Path
    env: dict[str, str] = field(repr=False)
    mount_stderr: str = ""

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    def pid(self) -> int | None:
        """The daemon's pid, from its pid file (in this mount's own runtime dir)."""
        files = list(Path(self.env["XDG_RUNTIME_DIR"]).glob("r8imfs-*/mounts/*.pid"))
        if len(files) != 1:
            return None
        return int(files[0].read_text().strip())

    def umount(self) -> subprocess.CompletedProcess[str]:
        return r8imfs("umount", str(self.path), env=self.env, timeout=UMOUNT_TIMEOUT)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def mount_env(workdir: Path, name: str) -> dict[str, str]:
    runtime = workdir / f"run-{name}"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    env.pop("COG_TOKEN", None)
    return env


@contextmanager
def mount_image(
    ref: str,
    workdir: Path,
    *extra: str,
    name: str = "mnt",
    cache_dir: Path | None = None,
) -> Iterator[Mount]:
    """Mount ``ref`` at ``workdir/name`` in daemon mode; always unmounted on exit."""
    mountpoint = workdir / name
    mountpoint.mkdir()
    cache = cache_dir if cache_dir is not None else workdir / f"cache-{name}"
    m = Mount(mountpoint, cache, workdir / f"{name}.log", mount_env(workdir, name))
    try:
        proc = r8imfs(
            "mount",
            ref,
            str(mountpoint),
            "--cache-dir",
            str(cache),
            "--log",
            str(m.log),
            *extra,
            env=m.env,
            timeout=MOUNT_TIMEOUT,
        )
        assert proc.returncode == 0, f"mount failed ({proc.returncode}): {proc.stderr}"
        assert is_mounted(mountpoint), "mount returned 0 but nothing is mounted"
        m.mount_stderr = proc.stderr
        yield m
    finally:
        force_unmount(mountpoint, m.env)


MountFactory = Callable[..., AbstractContextManager[Mount]]


def force_unmount(mountpoint: Path, env: dict[str, str]) -> None:
    """Leave no mount and no daemon, whatever state the test left them in."""
    if is_mounted(mountpoint):
        with suppress(subprocess.TimeoutExpired):
            r8imfs("umount", str(mountpoint), env=env, timeout=UMOUNT_TIMEOUT)
    for cmd in (["fusermount3", "-u", "-z"], ["umount", "-l"]):
        if not is_mounted(mountpoint):
            break
        with suppress(subprocess.TimeoutExpired, FileNotFoundError):
            subprocess.run([*cmd, str(mountpoint)], capture_output=True, timeout=10, check=False)
    if not wait_until(lambda: not daemons_for(mountpoint), 10):
        for pid in daemons_for(mountpoint):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- the reference root filesystem ------------------------------------------------

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
XATTR = "SCHILY.xattr."


@dataclass
class Reference:
    root: Path
    xattrs: dict[str, dict[str, bytes]]  # relative path → xattrs


def build_reference(layers: list[bytes], dest: Path, *, whiteouts: bool = True) -> Reference:
    """The merged rootfs of ``layers`` (uncompressed tars, bottom first) under ``dest``.

    ``whiteouts=False`` extracts every member as stored, whiteout files included
    (what ``layers/NN-*/`` shows of one layer).
    """
    dest.mkdir(parents=True)
    ref = Reference(dest, {})
    for tar in layers:
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            _apply(tf, ref, whiteouts)
    return ref


def _norm(name: str) -> str:
    """``./a//b/`` → ``a/b``; the root is ``""``."""
    return "/".join(part for part in name.split("/") if part and part != ".")


def _apply(tf: tarfile.TarFile, ref: Reference, whiteouts: bool) -> None:
    members = [(m, PurePosixPath(_norm(m.name))) for m in tf.getmembers()]
    if whiteouts:
        _apply_whiteouts(members, ref)
    for m, p in members:
        if (whiteouts and p.name.startswith(WHITEOUT)) or str(p) == ".":
            continue
        target = ref.root / p
        if m.islnk() and not (ref.root / _norm(m.linkname)).is_file():
            continue  # nothing to link to (a layer alone, linking into a lower one)
        if target.is_symlink() or (target.exists() and not (target.is_dir() and m.isdir())):
            _remove(ref, target)
        # A hardlink is the target's inode: its own header's mode and times must not win.
        tf.extract(m, ref.root, set_attrs=not m.islnk(), numeric_owner=True, filter="fully_trusted")
        ref.xattrs[str(p)] = {
            k[len(XATTR) :]: v.encode("utf-8", "surrogateescape")
            for k, v in m.pax_headers.items()
            if k.startswith(XATTR)
        }
        if m.islnk():  # one inode: the target's xattrs
            ref.xattrs[str(p)] = ref.xattrs.get(_norm(m.linkname), {})


def _apply_whiteouts(members: list[tuple[tarfile.TarInfo, PurePosixPath]], ref: Reference) -> None:
    for _, p in members:  # opaque directories: lower children go, wherever the marker sits
        if p.name == OPAQUE and (ref.root / p.parent).is_dir():
            for child in (ref.root / p.parent).iterdir():
                _remove(ref, child)
    for _, p in members:  # whiteouts: lower entries go
        if p.name.startswith(WHITEOUT) and p.name != OPAQUE:
            _remove(ref, ref.root / p.parent / p.name[len(WHITEOUT) :])


def _remove(ref: Reference, path: Path) -> None:
    rel = str(path.relative_to(ref.root))
    for key in [k for k in ref.xattrs if k == rel or k.startswith(rel + "/")]:
        del ref.xattrs[key]
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()


# -- comparing trees ----------------------------------------------------------------

Snapshot = dict[str, dict[str, object]]


def snapshot(root: Path, xattrs: Callable[[Path, str], dict[str, bytes]] | None = None) -> Snapshot:
    """What a tree shows, by relative path: type and mode, owner, size, body, target, xattrs.

    ``xattrs(path, rel)`` gives a path's xattrs (default: read them from the
    filesystem). Directory sizes and nlinks are left out (filesystems differ).
    """
    out: Snapshot = {}
    stack = [root]
    while stack:
        d = stack.pop()
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            path = Path(entry.path)
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            info: dict[str, object] = {"mode": oct(st.st_mode), "owner": (st.st_uid, st.st_gid)}
            if stat.S_ISREG(st.st_mode):
                info.update(size=st.st_size, nlink=st.st_nlink, mtime=int(st.st_mtime))
                info["body"] = path.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                info.update(size=st.st_size, target=os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                stack.append(path)
            info["xattrs"] = xattrs(path, rel) if xattrs else read_xattrs(path)
            out[rel] = info
    return out


def read_xattrs(path: Path) -> dict[str, bytes]:
    names = os.listxattr(path, follow_symlinks=False)
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)}


def reference_snapshot(ref: Reference) -> Snapshot:
    return snapshot(ref.root, lambda _path, rel: ref.xattrs.get(rel, {}))


def diff(expected: Snapshot, got: Snapshot) -> list[str]:
    """Readable differences (bodies summarised by length)."""
    problems = [f"missing: {p}" for p in sorted(expected.keys() - got.keys())]
    problems += [f"unexpected: {p}" for p in sorted(got.keys() - expected.keys())]
    for path in sorted(expected.keys() & got.keys()):
        for key in sorted(expected[path].keys() | got[path].keys()):
            want, have = expected[path].get(key), got[path].get(key)
            if want != have:
                if isinstance(want, bytes) and isinstance(have, bytes) and key == "body":
                    want, have = f"<{len(want)} bytes>", f"<{len(have)} different bytes>"
                problems.append(f"{path}: {key} {want!r} != {have!r}")
    return problems


# -- building layers ----------------------------------------------------------------

MTIME = 1_700_000_000


@dataclass
class Member:
    """A tar member: kind ``f`` file, ``d`` directory, ``l`` symlink, ``h`` hardlink."""

    path: str
    kind: str = "f"
    data: bytes = b""
    link: str = ""
    mode: int | None = None
    owner: tuple[int, int] = (0, 0)
    pax: dict[str, str] = field(default_factory=dict)


_TYPES = {"f": tarfile.REGTYPE, "d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE, "h": tarfile.LNKTYPE}
_MODES = {"f": 0o644, "d": 0o755, "l": 0o777, "h": 0o644}


def make_tar(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            info = tarfile.TarInfo(m.path)
            info.type = _TYPES[m.kind]
            info.mode = m.mode if m.mode is not None else _MODES[m.kind]
            info.uid, info.gid = m.owner
            info.mtime = MTIME
            info.linkname = m.link
            info.pax_headers = dict(m.pax)
            info.size = len(m.data) if m.kind == "f" else 0
            tf.addfile(info, io.BytesIO(m.data) if m.kind == "f" else None)
    return buf.getvalue()
