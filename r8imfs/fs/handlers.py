"""pyfuse3 handlers: thin translations from FUSE requests to ``ImageFiles``.

Rules kept here (FIELD-NOTES, "FUSE"):

* handlers never block the trio loop: file bodies come from
  ``ImageFiles.read``, which runs the engine in worker threads;
* ``st_blocks = ceil(size / 512)``, so ``cp`` never takes its sparse path;
  ``lseek`` is not implemented (coreutils falls back to plain reads);
* the image is immutable: ``keep_cache`` on open, long entry and attribute
  timeouts, no ``direct_io`` (the page cache makes mmap work);
* read-only: opening for writing gives EROFS (the mount is also ``ro``);
* a failed read is EIO, logged once per file, and never wrong bytes; every
  read is bounded by ``READ_TIMEOUT``.

Only ``pyfuse3.FUSEError`` leaves a handler.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import Any

import pyfuse3
import trio

from r8imfs.engine.entry import Kind
from r8imfs.errors import R8imfsError
from r8imfs.fs.inodes import ROOT, InTree, Namespace, Static
from r8imfs.fs.pagecache import DropBehind
from r8imfs.image.fetchplan import ReadStream
from r8imfs.image.image import ImageFiles

log = logging.getLogger("r8imfs.fs")

TIMEOUT = 24 * 3600.0  # entries and attributes never change while mounted
READ_TIMEOUT = 120.0
BLKSIZE = 128 * 1024

_TYPE_BITS = {
    Kind.FILE: stat.S_IFREG,
    Kind.DIR: stat.S_IFDIR,
    Kind.SYMLINK: stat.S_IFLNK,
    Kind.HARDLINK: stat.S_IFREG,
    Kind.CHARDEV: stat.S_IFCHR,
    Kind.BLOCKDEV: stat.S_IFBLK,
    Kind.FIFO: stat.S_IFIFO,
}
#: file handles of opened image files (a writable mount numbers its own from 1 << 41)
FIRST_FH = 1 << 42
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


@dataclass(slots=True)
class _Opened:
    """An open file: its inode, and its read-ahead when its layer is read by units."""

    inode: int
    stream: ReadStream | None


class ImageOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, files: ImageFiles) -> None:
        super().__init__()
        self.files = files
        trees: list[Any] = [files.rootfs, *(x.tree for x in files.layers)]
        self.ns = Namespace(
            files.manifest_raw, files.config_raw, trees, [x.name for x in files.layers]
        )
        self._failed: set[int] = set()
        self._open: dict[int, _Opened] = {}
        self._fhs = itertools.count(FIRST_FH)
        self._mounted_at = time.time_ns()
        #: drops the page cache behind sequential readers (set once mounted)
        self.pages: DropBehind | None = None
        #: set by ``init``: the kernel has (as soon as this loop goes on) our
        #: reply to FUSE_INIT, and with it the mount's settings
        self.initialized = trio.Event()

    def init(self) -> None:
        self.initialized.set()

    # -- attributes ---------------------------------------------------------
    def _attrs(self, ino: int) -> pyfuse3.EntryAttributes:
        target = self.ns.get(ino)
        if target is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.entry_timeout = TIMEOUT
        a.attr_timeout = TIMEOUT
        a.st_blksize = BLKSIZE
        if isinstance(target, Static):
            self._static_attrs(a, target)
        else:
            self._tree_attrs(a, target)
        a.st_blocks = (a.st_size + 511) // 512
        return a

    def _static_attrs(self, a: pyfuse3.EntryAttributes, target: Static) -> None:
        if target.is_dir:
            a.st_mode = stat.S_IFDIR | 0o555
            a.st_nlink = 2
        else:
            a.st_mode = stat.S_IFREG | 0o444
            a.st_nlink = 1
            a.st_size = len(target.data)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self._mounted_at

    def _tree_attrs(self, a: pyfuse3.EntryAttributes, target: InTree) -> None:
        e = target.node.entry
        a.st_mode = _TYPE_BITS[e.kind] | (e.mode & 0o7777)
        a.st_nlink = target.node.nlink
        a.st_uid, a.st_gid = e.uid, e.gid
        if e.kind in (Kind.FILE, Kind.HARDLINK):
            a.st_size = e.size
        elif e.kind is Kind.SYMLINK:
            a.st_size = len(os.fsencode(e.linkname))
        if e.kind in (Kind.CHARDEV, Kind.BLOCKDEV):
            a.st_rdev = os.makedev(e.devmajor, e.devminor)
        ns = int(e.mtime * 1e9)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attrs(inode)

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        ino = self.ns.lookup(parent_inode, os.fsdecode(name))
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(ino)

    async def forget(self, inode_list: Any) -> None:
        pass  # inodes live as long as the mount

    # -- directories --------------------------------------------------------
    async def opendir(self, inode: int, ctx: Any) -> int:
        target = self.ns.get(inode)
        if target is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if isinstance(target, InTree) and not target.node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if isinstance(target, Static) and not target.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        # Offsets are positions in a stable, sorted listing (+1: 0 means "start").
        children = self.ns.children(fh)
        for pos in range(start_id, len(children)):
            name, ino = children[pos]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(ino), pos + 1):
                return

    async def releasedir(self, fh: int) -> None:
        pass

    # -- files --------------------------------------------------------------
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        target = self.ns.get(inode)
        if target is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if isinstance(target, Static) and target.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if isinstance(target, InTree) and target.node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        stream = self.files.stream(target.node) if isinstance(target, InTree) else None
        fh = next(self._fhs)
        self._open[fh] = _Opened(inode, stream)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=False)

    # pyfuse3's stub says bytes; it replies with any buffer (PyObject_GetBuffer)
    async def read(  # type: ignore[override]
        self, fh: int, off: int, size: int
    ) -> bytes | bytearray | memoryview:
        opened = self._open.get(fh)
        if opened is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        target = self.ns.get(opened.inode)
        if isinstance(target, Static):
            return target.data[off : off + size]
        if target is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        try:
            with trio.fail_after(READ_TIMEOUT):
                data = await self.files.read(target.node, off, size, opened.stream)
        except (R8imfsError, OSError, trio.TooSlowError) as exc:
            if opened.inode not in self._failed:
                self._failed.add(opened.inode)
                why = str(exc)
                if isinstance(exc, trio.TooSlowError):
                    where = self.files.describe_read(target.node, off, size)
                    why = f"no answer in {READ_TIMEOUT:g} s ({off}+{size}: {where})"
                log.error("EIO reading %s: %s", target.node.path, why)
            raise pyfuse3.FUSEError(errno.EIO) from None
        if self.pages is not None:
            self.pages.read(fh, opened.inode, off, len(data))
        return data

    async def release(self, fh: int) -> None:
        if self.pages is not None:
            self.pages.release(fh)
        opened = self._open.pop(fh, None)
        if opened is not None and opened.stream is not None:
            opened.stream.close()  # its read-ahead is dropped

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        target = self.ns.get(inode)
        if not isinstance(target, InTree) or target.node.kind is not Kind.SYMLINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(target.node.entry.linkname)

    # -- extended attributes --------------------------------------------------
    def _xattrs(self, inode: int) -> dict[str, bytes]:
        target = self.ns.get(inode)
        if target is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return target.node.entry.xattrs if isinstance(target, InTree) else {}

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        value = self._xattrs(inode).get(os.fsdecode(name))
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return [os.fsencode(k) for k in self._xattrs(inode)]

    # -- the filesystem ---------------------------------------------------------
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        total = sum(x.descriptor.size for x in self.files.layers)
        s.f_bsize = s.f_frsize = 512
        s.f_blocks = (total + 511) // 512
        s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.files.rootfs) + 4
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        return True


assert ROOT == pyfuse3.ROOT_INODE
