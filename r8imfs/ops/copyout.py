"""``cp IMAGE:PATH DEST``: a file or a tree out of an image, never outside DEST.

Like ``cp -R`` on the source side (symlinks copied as symlinks, their
targets kept as text, never followed) and like a careful tar extractor on
the destination side: every name is created relative to a directory file
descriptor opened with ``O_NOFOLLOW``, files with ``O_EXCL | O_NOFOLLOW``
after removing whatever non-directory stood there, so nothing is ever
written through a symlink, whether the image made it or DEST already had
it. A directory of the image landing where DEST has a non-directory is an
error, not a replacement.

Modes (permission and sticky bits; setuid and setgid dropped, as ``cp``
without ``-p``) and mtimes are kept; owners are not (``cp`` without ``-p``).
Directory modes and times are set last, deepest first, so a read-only
directory of the image is still filled. Devices and FIFOs are skipped and
counted. Hardlinked names are copied as separate files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from r8imfs import _threads
from r8imfs.engine.entry import Kind, join
from r8imfs.engine.merged import Node
from r8imfs.errors import R8imfsError
from r8imfs.image.image import ImageFiles
from r8imfs.ops.browse import chunks, preorder
from r8imfs.ops.progress import Transfers

MODE_BITS = 0o1777
#: directory descriptors kept open at once (re-opened from DEST when evicted)
OPEN_DIRS = 64
_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(slots=True)
class Copied:
    """What a copy made: counts, bytes, and the paths it skipped."""

    target: Path
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)


async def copy_out(
    files: ImageFiles, top: Node, dest: Path, board: Transfers, *, label: str
) -> Copied:
    """Copy ``top`` (a node of ``files.rootfs``) to ``dest`` as ``cp -R`` would."""
    base, name = _target(top, dest)
    nodes = [top, *preorder(files.rootfs, top)] if top.is_dir else [top]
    total = sum(n.entry.size for n in nodes if n.kind in (Kind.FILE, Kind.HARDLINK))
    root_fd = await _threads.run_io(os.open, str(base), _NOFOLLOW_DIR & ~os.O_NOFOLLOW)
    dirs = _Dirs(root_fd, base)
    done = Copied(base / name if name else base)
    bar = board.bar(label, total)
    later: list[tuple[str, Node]] = []
    try:
        for node in nodes:
            rel = _rel(top, node, name)
            await _copy_one(files, dirs, node, rel, done, bar.advance)
            if node.is_dir and rel:
                later.append((rel, node))
        for rel, node in reversed(later):  # deepest first
            await _threads.run_io(dirs.set_attrs, rel, node.entry.mode, _ns(node))
    finally:
        bar.finish()
        await _threads.run_io(dirs.close)
    return done


def _target(top: Node, dest: Path) -> tuple[Path, str]:
    """(existing directory, name to create in it); name "" copies into it."""
    if dest.is_dir():
        return dest, "" if top.path == "" else top.name
    if not dest.parent.is_dir():
        raise R8imfsError(f"{dest.parent}: no such directory")
    if dest.name in ("", ".", ".."):
        raise R8imfsError(f"{dest}: not a name to create")
    return dest.parent, dest.name


def _rel(top: Node, node: Node, name: str) -> str:
    below = node.path[len(top.path) :].lstrip("/") if top.path else node.path
    return join(name, below) if below else name


def _ns(node: Node) -> int:
    return int(node.entry.mtime * 1_000_000_000)


async def _copy_one(
    files: ImageFiles,
    dirs: _Dirs,
    node: Node,
    rel: str,
    done: Copied,
    advance: Callable[[int], None],
) -> None:
    kind = node.kind
    if kind is Kind.DIR:
        if rel:
            await _threads.run_io(dirs.mkdir, rel)
        done.dirs += 1
    elif kind is Kind.SYMLINK:
        await _threads.run_io(dirs.symlink, rel, node.entry.linkname, _ns(node))
        done.symlinks += 1
    elif kind in (Kind.FILE, Kind.HARDLINK):
        fd = await _threads.run_io(dirs.create, rel)
        try:
            async for data in chunks(files, node):
                await _threads.run_io(_write_all, fd, data)
                done.bytes += len(data)
                advance(len(data))
            await _threads.run_io(_finish_file, fd, node.entry.mode, _ns(node))
        finally:
            await _threads.run_io(os.close, fd)
        done.files += 1
    else:
        done.skipped.append(f"/{node.path} ({kind.value})")


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _finish_file(fd: int, mode: int, ns: int) -> None:
    os.fchmod(fd, mode & MODE_BITS)
    os.utime(fd, ns=(ns, ns))


class _Dirs:
    """Directory descriptors under DEST, each opened from its parent with O_NOFOLLOW.

    Used from one task at a time (each call runs in a worker thread, but the
    copy awaits each before the next), so it needs no lock.
    """

    def __init__(self, root_fd: int, base: Path) -> None:
        self.root = root_fd
        self.base = base
        self.fds: OrderedDict[str, int] = OrderedDict()

    def fd(self, rel: str) -> int:
        if not rel:
            return self.root
        fd = self.fds.get(rel)
        if fd is not None:
            self.fds.move_to_end(rel)
            return fd
        parent, _, name = rel.rpartition("/")
        parent_fd = self.fd(parent)
        try:
            fd = os.open(name, _NOFOLLOW_DIR, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _not_a_dir(self.base / rel) from None
            raise
        self.fds[rel] = fd
        while len(self.fds) > OPEN_DIRS:
            os.close(self.fds.popitem(last=False)[1])
        return fd

    def _parent(self, rel: str) -> tuple[int, str]:
        parent, _, name = rel.rpartition("/")
        return self.fd(parent), name

    def mkdir(self, rel: str) -> None:
        parent_fd, name = self._parent(rel)
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                raise _not_a_dir(self.base / rel) from None

    def _clear(self, parent_fd: int, name: str, rel: str) -> None:
        """Remove a non-directory at ``name`` (never what a symlink points to)."""
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise R8imfsError(f"{self.base / rel}: a directory is in the way of a file")
        os.unlink(name, dir_fd=parent_fd)

    def create(self, rel: str) -> int:
        parent_fd, name = self._parent(rel)
        self._clear(parent_fd, name, rel)
        return os.open(name, _NEW_FILE, 0o600, dir_fd=parent_fd)

    def symlink(self, rel: str, target: str, ns: int) -> None:
        parent_fd, name = self._parent(rel)
        self._clear(parent_fd, name, rel)
        os.symlink(target, name, dir_fd=parent_fd)
        with contextlib.suppress(NotImplementedError, OSError):
            os.utime(name, ns=(ns, ns), dir_fd=parent_fd, follow_symlinks=False)

    def set_attrs(self, rel: str, mode: int, ns: int) -> None:
        fd = self.fd(rel)
        os.fchmod(fd, mode & MODE_BITS)
        os.utime(fd, ns=(ns, ns))

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        os.close(self.root)


def _not_a_dir(path: Path) -> R8imfsError:
    return R8imfsError(f"{path}: exists and is not a directory; not writing through it")
