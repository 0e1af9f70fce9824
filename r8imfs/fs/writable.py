"""pyfuse3 handlers of a writable mount: ``rootfs/`` over an upper directory.

Everything outside ``rootfs/`` (manifest.json, config.json, layers/) is served
by ``ImageOperations`` as on a read-only mount. ``rootfs/`` is the
``archive.upper.Overlay`` of the image's merged tree and the upper directory:

* inodes of ``rootfs/`` are numbered by path from ``RW_ROOT`` up (a range
  of their own) and follow renames; attributes and entries are cached by
  the kernel for ``TIMEOUT`` only, since they can change now;
* every namespace change runs the overlay in a worker thread under one
  ``trio.Lock``: changes apply one at a time, in the order they came;
* opening a lower file for writing (or chmod, chown, utimes, truncate to a
  non-zero size, rename) copies it up first: its bytes are read lazily
  through ``ImageFiles.read`` into ``work/``, then renamed into the upper
  tree. ``O_TRUNC`` and truncate-to-zero copy up nothing. Concurrent
  copy-ups of one file share one transfer. Files never opened for writing
  are read from the image as before, lazily;
* ``rename`` of a directory that merges lower content answers EXDEV, as
  overlayfs does without ``redirect_dir``: ``mv`` then copies and deletes;
* hard links, device nodes and extended attributes cannot be created.

Only ``pyfuse3.FUSEError`` leaves a handler.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, TypeVarTuple, Unpack

import pyfuse3
import trio

from r8imfs import _threads
from r8imfs.engine.entry import Kind, join
from r8imfs.engine.merged import Node
from r8imfs.engine.upper import Found, InLower, InUpper, Overlay, UpperDir
from r8imfs.errors import R8imfsError
from r8imfs.fs.handlers import BLKSIZE, READ_TIMEOUT, ImageOperations
from r8imfs.fs.inodes import ROOT, InTree
from r8imfs.image.fetchplan import ReadStream
from r8imfs.image.image import ImageFiles

log = logging.getLogger("r8imfs.fs")

RW_ROOT = 1 << 40
FIRST_FH = 1 << 41
TIMEOUT = 1.0
COPY_PIECE = 4 * 1024 * 1024
T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class PathInodes:
    """Inode numbers of ``rootfs/`` by path; a rename moves a whole subtree's numbers."""

    def __init__(self) -> None:
        self._ino: dict[str, int] = {"": RW_ROOT}
        self._path: dict[int, str] = {RW_ROOT: ""}
        self._next = RW_ROOT + 1

    def ino(self, path: str) -> int:
        ino = self._ino.get(path)
        if ino is None:
            ino = self._ino[path] = self._next
            self._path[ino] = path
            self._next += 1
        return ino

    def path(self, ino: int) -> str | None:
        return self._path.get(ino)

    def dropped(self, path: str) -> None:
        for p in [p for p in self._ino if p == path or p.startswith(path + "/")]:
            del self._path[self._ino.pop(p)]

    def moved(self, old: str, new: str) -> None:
        self.dropped(new)
        for p in [p for p in self._ino if p == old or p.startswith(old + "/")]:
            ino = self._ino.pop(p)
            self._ino[new + p[len(old) :]] = ino
            self._path[ino] = new + p[len(old) :]


@dataclass(slots=True)
class _Upper:
    fd: int


@dataclass(slots=True)
class _Lower:
    node: Node


class WritableOperations(ImageOperations):
    def __init__(self, files: ImageFiles, upper: UpperDir) -> None:
        super().__init__(files)
        self.overlay = Overlay(upper, files.rootfs)
        self.inodes = PathInodes()
        self._lock = trio.Lock()
        self._handles: dict[int, _Upper | _Lower] = {}
        self._dirs: dict[int, tuple[str, list[tuple[str, Found]]]] = {}
        self._next_fh = FIRST_FH
        self._copying: dict[str, trio.Event] = {}

    # -- plumbing ------------------------------------------------------------------
    async def _run(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """``fn(*args)`` on the overlay, in a thread, one at a time; OSError → FUSEError."""
        try:
            async with self._lock:
                return await _threads.run_io(fn, *args)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    def _path(self, ino: int) -> str:
        path = self.inodes.path(ino)
        if path is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return path

    def _child(self, parent: int, name: bytes) -> str:
        return join(self._path(parent), os.fsdecode(name))

    def _fh(self, handle: _Upper | _Lower) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return fh

    async def _find(self, path: str) -> Found:
        found = await self._run(self.overlay.find, path)
        if found is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return found

    def _entry(self, path: str, found: Found) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = self.inodes.ino(path)
        a.st_blksize = BLKSIZE
        if isinstance(found, InLower):
            self._tree_attrs(a, InTree(0, found.node))
        else:
            _stat_attrs(a, found.st)
        a.entry_timeout = a.attr_timeout = TIMEOUT
        a.st_blocks = (a.st_size + 511) // 512
        return a

    async def _attrs_of(self, path: str) -> pyfuse3.EntryAttributes:
        return self._entry(path, await self._find(path))

    # -- lookups -------------------------------------------------------------------
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == ROOT and name == b"rootfs":
            return await self._attrs_of("")
        if parent_inode < RW_ROOT:
            return await super().lookup(parent_inode, name, ctx)
        return await self._attrs_of(self._child(parent_inode, name))

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if inode < RW_ROOT:
            return await super().getattr(inode, ctx)
        return await self._attrs_of(self._path(inode))

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        if inode < RW_ROOT:
            return await super().readlink(inode, ctx)
        found = await self._find(self._path(inode))
        if isinstance(found, InLower):
            if found.node.kind is not Kind.SYMLINK:
                raise pyfuse3.FUSEError(errno.EINVAL)
            return os.fsencode(found.node.entry.linkname)
        if not stat.S_ISLNK(found.st.st_mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(await self._run(os.readlink, self.overlay.up(found.path)))

    # -- directories -----------------------------------------------------------------
    async def opendir(self, inode: int, ctx: Any) -> int:
        if inode < RW_ROOT:
            return await super().opendir(inode, ctx)
        path = self._path(inode)
        listing = await self._run(self._listing, path)
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = (path, listing)
        return fh

    def _listing(self, path: str) -> list[tuple[str, Found]]:
        out = []
        for name in self.overlay.listdir(path):
            found = self.overlay.find(join(path, name))
            if found is not None:
                out.append((name, found))
        return out

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        opened = self._dirs.get(fh)
        if opened is None:
            return await self._root_readdir(fh, start_id, token)
        path, listing = opened
        for pos in range(start_id, len(listing)):
            name, found = listing[pos]
            attrs = self._entry(join(path, name), found)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, pos + 1):
                return

    async def _root_readdir(self, fh: int, start_id: int, token: Any) -> None:
        if fh != ROOT:
            return await super().readdir(fh, start_id, token)
        children = self.ns.children(ROOT)
        for pos in range(start_id, len(children)):
            name, ino = children[pos]
            attrs = await (self._attrs_of("") if name == "rootfs" else super().getattr(ino))
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, pos + 1):
                return

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files -------------------------------------------------------------------------
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if inode < RW_ROOT:
            return await super().open(inode, flags, ctx)
        path = self._path(inode)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            await self._copy_up(path, data=not flags & os.O_TRUNC)
        found = await self._find(path)
        if isinstance(found, InLower):
            if found.node.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            fh = self._fh(_Lower(found.node))
            return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=False)
        fd = await self._run(_open_upper, self.overlay, path, flags)
        return pyfuse3.FileInfo(fh=self._fh(_Upper(fd)), keep_cache=False, direct_io=False)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if parent_inode < RW_ROOT:
            raise pyfuse3.FUSEError(errno.EROFS)
        path = self._child(parent_inode, name)
        fd = await self._run(self.overlay.create, path, mode, _owner(ctx), _open_flags(flags))
        info = pyfuse3.FileInfo(fh=self._fh(_Upper(fd)), keep_cache=False, direct_io=False)
        return info, await self._attrs_of(path)

    # pyfuse3's stub says bytes; it replies with any buffer (PyObject_GetBuffer)
    async def read(  # type: ignore[override]
        self, fh: int, off: int, size: int
    ) -> bytes | bytearray | memoryview:
        handle = self._handles.get(fh)
        if handle is None:
            return await super().read(fh, off, size)
        if isinstance(handle, _Upper):
            try:
                return await _threads.run_io(os.pread, handle.fd, size, off)
            except OSError as exc:
                raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        return await self._read_lower(handle.node, off, size)

    async def _read_lower(
        self, node: Node, off: int, size: int, stream: ReadStream | None = None
    ) -> bytes | bytearray | memoryview:
        try:
            with trio.fail_after(READ_TIMEOUT):
                return await self.files.read(node, off, size, stream)
        except (R8imfsError, OSError, trio.TooSlowError) as exc:
            log.error("EIO reading %s: %s", node.path, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles.get(fh)
        if not isinstance(handle, _Upper):
            raise pyfuse3.FUSEError(errno.EBADF)
        try:
            await _threads.run_io(_pwrite_all, handle.fd, buf, off)
            return len(buf)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._handles.get(fh)
        if isinstance(handle, _Upper):
            await _threads.run_io(os.fdatasync if datasync else os.fsync, handle.fd)

    async def flush(self, fh: int) -> None:
        pass

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return await super().release(fh)
        if isinstance(handle, _Upper):
            await _threads.run_io(os.close, handle.fd)

    # -- copy-up ----------------------------------------------------------------------
    async def _copy_up(self, path: str, *, data: bool) -> None:
        """Make ``path`` an upper entry; lower file bytes come through the engine."""
        while True:
            found = await self._find(path)
            if isinstance(found, InUpper):
                return
            if found.node.kind not in (Kind.FILE, Kind.HARDLINK):
                await self._run(self.overlay.copy_up_special, path)
                return
            pending = self._copying.get(path)
            if pending is None:
                break
            await pending.wait()  # another request is copying it: use its copy
        done = self._copying[path] = trio.Event()
        try:
            await self._transfer(path, found.node, data)
        finally:
            del self._copying[path]
            done.set()

    async def _transfer(self, path: str, node: Node, data: bool) -> None:
        fd, tmp = await _threads.run_io(self.overlay.begin_copy_up)
        try:
            stream = self.files.stream(node)  # read-ahead, on a layer read by units
            try:
                for off in range(0, node.entry.size if data else 0, COPY_PIECE):
                    piece = await self._read_lower(node, off, COPY_PIECE, stream)
                    await _threads.run_io(_pwrite_all, fd, piece, off)
                await _threads.run_io(os.fsync, fd)
            finally:
                if stream is not None:
                    stream.close()
                await _threads.run_io(os.close, fd)
            await self._run(self.overlay.install_copy_up, path, tmp)
        except BaseException:
            await _threads.run_io(tmp.unlink, True)
            raise

    # -- changing the namespace ---------------------------------------------------------
    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: Any, fh: int | None, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        if inode < RW_ROOT:
            raise pyfuse3.FUSEError(errno.EROFS)
        path = self._path(inode)
        if not path:
            raise pyfuse3.FUSEError(errno.EPERM)  # the root keeps the image's metadata
        await self._copy_up(path, data=not (fields.update_size and attr.st_size == 0))
        await self._run(_apply_setattr, self.overlay, path, attr, fields)
        return await self._attrs_of(path)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        path = self._writable_child(parent_inode, name)
        found = await self._run(self.overlay.mkdir, path, mode, _owner(ctx))
        return self._entry(path, found)

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        path = self._writable_child(parent_inode, name)
        found = await self._run(self.overlay.symlink, path, os.fsdecode(target), _owner(ctx))
        return self._entry(path, found)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        path = self._writable_child(parent_inode, name)
        await self._run(lambda: self.overlay.remove(path, directory=False))
        self.inodes.dropped(path)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        path = self._writable_child(parent_inode, name)
        await self._run(lambda: self.overlay.remove(path, directory=True))
        self.inodes.dropped(path)

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any,
    ) -> None:
        old = self._writable_child(parent_inode_old, name_old)
        new = self._writable_child(parent_inode_new, name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        noreplace = bool(flags & pyfuse3.RENAME_NOREPLACE)
        found = await self._find(old)
        if isinstance(found, InLower) and not found.node.is_dir:
            await self._copy_up(old, data=True)
        await self._run(lambda: self.overlay.rename(old, new, noreplace=noreplace))
        self.inodes.moved(old, new)

    def _writable_child(self, parent_inode: int, name: bytes) -> str:
        if parent_inode < RW_ROOT:
            raise pyfuse3.FUSEError(errno.EROFS)
        return self._child(parent_inode, name)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    # -- attributes of the filesystem -----------------------------------------------------
    async def _rw_xattrs(self, inode: int) -> dict[str, bytes]:
        """A lower entry's xattrs; upper entries have none (copy-up does not carry them)."""
        found = await self._find(self._path(inode))
        return found.node.entry.xattrs if isinstance(found, InLower) else {}

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if inode < RW_ROOT:
            return await super().getxattr(inode, name, ctx)
        value = (await self._rw_xattrs(inode)).get(os.fsdecode(name))
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        if inode < RW_ROOT:
            return await super().listxattr(inode, ctx)
        return [os.fsencode(k) for k in await self._rw_xattrs(inode)]

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        v = await _threads.run_io(os.statvfs, self.overlay.upper.tree)
        s = pyfuse3.StatvfsData()
        s.f_bsize, s.f_frsize = v.f_bsize, v.f_frsize
        s.f_blocks, s.f_bfree, s.f_bavail = v.f_blocks, v.f_bfree, v.f_bavail
        s.f_files, s.f_ffree, s.f_favail = v.f_files, v.f_ffree, v.f_favail
        s.f_namemax = 255
        return s

    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        if inode < RW_ROOT:
            return await super().access(inode, mode, ctx)
        return True  # default_permissions: the kernel checked the modes already


def _owner(ctx: Any) -> tuple[int, int]:
    return (ctx.uid, ctx.gid)


def _open_flags(flags: int) -> int:
    # the kernel gives offsets for appends; O_APPEND on our fd would make pwrite ignore them
    return flags & ~(os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOCTTY)


def _open_upper(overlay: Overlay, path: str, flags: int) -> int:
    found = overlay.find(path)
    if not isinstance(found, InUpper):
        raise FileNotFoundError(errno.ENOENT, "gone", path)
    if stat.S_ISDIR(found.st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    return os.open(overlay.up(path), _open_flags(flags))


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, off: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n


def _apply_setattr(overlay: Overlay, path: str, attr: Any, fields: Any) -> None:
    target = overlay.up(path)
    st = os.lstat(target)
    link = stat.S_ISLNK(st.st_mode)
    if fields.update_size:
        os.truncate(target, attr.st_size)
    if fields.update_mode and not link:
        os.chmod(target, stat.S_IMODE(attr.st_mode))
    if fields.update_uid or fields.update_gid:
        uid = attr.st_uid if fields.update_uid else -1
        gid = attr.st_gid if fields.update_gid else -1
        os.lchown(target, uid, gid)
    if fields.update_atime or fields.update_mtime:
        atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
        mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
        os.utime(target, ns=(atime, mtime), follow_symlinks=False)


def _stat_attrs(a: pyfuse3.EntryAttributes, st: os.stat_result) -> None:
    a.st_mode = st.st_mode
    a.st_nlink = st.st_nlink if not stat.S_ISDIR(st.st_mode) else 2
    a.st_uid, a.st_gid = st.st_uid, st.st_gid
    a.st_size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0
    a.st_rdev = st.st_rdev
    a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
