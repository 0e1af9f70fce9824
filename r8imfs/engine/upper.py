"""The writable mount's upper directory: changes kept as an OCI layer in waiting.

Theory of operation
-------------------
A writable mount shows ``lower`` (the image's ``MergedTree``, read lazily)
with the changes of an *upper directory* on top, as overlayfs does, except
that the upper tree is kept in the OCI layer's own spelling (image-spec
``layer.md``, "Whiteouts"), so committing it is a plain walk and tar::

    UPPER/
      origin.json        the image (repository, manifest digest) and the commits made
      manifest.json      the base's exact bytes, so a commit needs no re-resolve
      config.json
      lock               flock'ed by the daemon serving it (one mount per upper)
      tree/              changed and new entries at their rootfs paths;
                         D/.wh.NAME: NAME of the lower layers is deleted;
                         D/.wh..wh..opq: D hides every lower child (it replaced a
                         lower directory that was deleted, or it is one renamed in)
      work/              copy-up temporaries, renamed into tree/ once whole

Rules, checked in ``Overlay.find``, one path component at a time: an upper
entry wins over a lower one; a whiteout hides the lower name; an opaque
directory, or an upper non-directory, hides everything lower below it. Names
starting with ``.wh.`` cannot be created through the mount (they would mean
something else once committed).

Crash safety: every change is one or two renames/unlinks inside ``tree/``
(a whiteout is written before the upper entry it replaces is removed, and a
copy-up is renamed into place only once complete), so a daemon killed at
any point leaves a tree that is a valid layer: at worst a file written half
way, as on any filesystem. Leftovers in ``work/`` are dropped on the next open.

``Overlay`` is synchronous (local disk only) and not thread-safe: the FUSE
handlers run its mutating methods one at a time, in worker threads. Copying
a lower file's bytes up is the caller's job (``begin_copy_up``, then
``install_copy_up``), because lower bytes come through the async engine.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r8imfs.engine.entry import Kind, join, parent_of
from r8imfs.engine.merged import OPAQUE, WHITEOUT_PREFIX, MergedTree, Node
from r8imfs.errors import R8imfsError, UsageError

ORIGIN = "origin.json"
TREE = "tree"
WORK = "work"
LOCK = "lock"
FORMAT = 1


class UpperInUse(R8imfsError):
    """Another mount serves this upper directory."""


@dataclass(frozen=True, slots=True)
class Origin:
    """What the changes apply to: the image as mounted, by digest."""

    image: str  # the reference as given to mount
    repository: str  # registry/name, where its layers are mounted from
    manifest_digest: str


class UpperDir:
    """An upper directory on disk: origin, base bytes, the tree, commit records."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tree = root / TREE
        self.work = root / WORK
        self._lock_fd: int | None = None

    # -- creating and opening ----------------------------------------------------
    @classmethod
    def prepare(
        cls, root: Path, origin: Origin, manifest_raw: bytes, config_raw: bytes
    ) -> UpperDir:
        """Create ``root`` for ``origin``, or reopen it if it holds changes to the same image."""
        upper = cls(root)
        if (root / ORIGIN).exists():
            found = upper.origin()
            if found.manifest_digest != origin.manifest_digest:
                raise UsageError(
                    f"{root} holds changes to {found.image} ({found.manifest_digest}), "
                    f"not to {origin.image} ({origin.manifest_digest})",
                    hint="give another --upper directory",
                )
        else:
            if root.exists() and any(root.iterdir()):
                raise UsageError(f"{root} is not empty and holds no r8imfs changes")
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            (root / "manifest.json").write_bytes(manifest_raw)
            (root / "config.json").write_bytes(config_raw)
            record = {"format": FORMAT, **_origin_json(origin), "commits": []}
            _write_json(root / ORIGIN, record)
        upper.tree.mkdir(exist_ok=True)
        upper.work.mkdir(exist_ok=True)
        return upper

    def lock(self) -> None:
        """Hold the upper for this process (released when it exits, even on SIGKILL)."""
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UpperInUse(f"{self.root} is in use by another writable mount") from None
        self._lock_fd = fd
        # ours alone now: drop what a killed daemon or commit left half done
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir()
        for leftover in self.root.glob("commit-*.tar*"):
            leftover.unlink(missing_ok=True)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- records ---------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        try:
            data = json.loads((self.root / ORIGIN).read_bytes())
        except (OSError, ValueError) as exc:
            raise R8imfsError(f"{self.root} is not an r8imfs upper directory: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise R8imfsError(f"{self.root}/{ORIGIN} is of an unknown format")
        return data

    def origin(self) -> Origin:
        data = self.record()
        return Origin(data["image"], data["repository"], data["manifest_digest"])

    def base(self) -> tuple[bytes, bytes]:
        """The base image's manifest and config bytes."""
        return (self.root / "manifest.json").read_bytes(), (self.root / "config.json").read_bytes()

    def note_commit(self, image: str, fingerprint: str) -> None:
        data = self.record()
        data["commits"].append({"image": image, "fingerprint": fingerprint})
        _write_json(self.root / ORIGIN, data)

    def last_commit(self) -> dict[str, str] | None:
        commits = self.record().get("commits") or []
        return commits[-1] if commits else None

    # -- state of the changes --------------------------------------------------------
    def has_changes(self) -> bool:
        return self.tree.is_dir() and any(self.tree.iterdir())

    def fingerprint(self) -> str:
        """A digest of every entry's path and metadata: equal iff nothing changed since."""
        h = hashlib.sha256()
        for rel, st in walk(self.tree):
            h.update(f"{rel}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
            h.update(f"{st.st_uid}:{st.st_gid}\n".encode("utf-8", "surrogateescape"))
        return "sha256:" + h.hexdigest()

    def uncommitted(self) -> bool:
        """Changes that no commit has taken yet."""
        if not self.has_changes():
            return False
        last = self.last_commit()
        return last is None or last.get("fingerprint") != self.fingerprint()

    def discard(self) -> None:
        shutil.rmtree(self.root)


def default_location(cache_dir: Path, mountpoint: str, manifest_digest: str) -> Path:
    """``<cache>/upper/<key>``: the same image mounted at the same place finds its changes."""
    key = hashlib.sha256(f"{mountpoint}\0{manifest_digest}".encode()).hexdigest()[:24]
    return cache_dir / "upper" / key


def walk(top: Path) -> list[tuple[str, os.stat_result]]:
    """Every entry under ``top`` (relative path, lstat), parents first, names sorted."""
    out: list[tuple[str, os.stat_result]] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        for name in os.listdir(top / rel if rel else top):
            child = join(rel, name)
            st = os.lstat(top / child)
            out.append((child, st))
            if stat.S_ISDIR(st.st_mode):
                stack.append(child)
    out.sort(key=lambda item: item[0].split("/"))  # parents first, siblings sorted
    return out


def _origin_json(origin: Origin) -> dict[str, str]:
    return {
        "image": origin.image,
        "repository": origin.repository,
        "manifest_digest": origin.manifest_digest,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- the merged view ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InUpper:
    path: str
    st: os.stat_result


@dataclass(frozen=True, slots=True)
class InLower:
    node: Node


Found = InUpper | InLower


def _err(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


def _whiteout(name: str) -> str:
    return WHITEOUT_PREFIX + name


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


class Overlay:
    """``lower`` with ``upper`` on top; paths are rootfs paths ("" is the root)."""

    def __init__(self, upper: UpperDir, lower: MergedTree) -> None:
        self.upper = upper
        self.lower = lower

    def up(self, path: str) -> Path:
        return self.upper.tree / path if path else self.upper.tree

    # -- reading ---------------------------------------------------------------------
    def _lower_open(self, path: str) -> bool:
        """Can lower-layer entries show *inside* directory ``path``?"""
        cur = ""
        for name in path.split("/") if path else []:
            parent, cur = cur, join(cur, name)
            if self._hides(parent, name):
                return False
            st = _lstat(self.up(cur))
            if st is not None and not stat.S_ISDIR(st.st_mode):
                return False
            node = self.lower.lookup(cur)
            if node is None or not node.is_dir:
                return False
        return not (self.up(path) / OPAQUE).exists()

    def _hides(self, parent: str, name: str) -> bool:
        """Does the upper hide lower ``parent/name`` (a whiteout or an opaque parent)?"""
        d = self.up(parent)
        return (d / _whiteout(name)).exists() or (d / OPAQUE).exists()

    def _lower_visible(self, path: str) -> Node | None:
        if not path:
            return self.lower.lookup("")
        parent, _, name = path.rpartition("/")
        if not self._lower_open(parent) or self._hides(parent, name):
            return None
        return self.lower.lookup(path)

    def find(self, path: str) -> Found | None:
        if not path:  # the root's metadata stays the image's
            root = self.lower.lookup("")
            return None if root is None else InLower(root)
        parent = parent_of(path)
        if path and not self._is_dir(parent):
            return None
        st = _lstat(self.up(path))
        if st is not None:
            return InUpper(path, st)
        node = self._lower_visible(path)
        return None if node is None else InLower(node)

    def _is_dir(self, path: str) -> bool:
        """Is ``path`` a directory of the merged view? (every parent checked)"""
        cur = ""
        for name in path.split("/") if path else []:
            parent, cur = cur, join(cur, name)
            st = _lstat(self.up(cur))
            if st is not None:
                if not stat.S_ISDIR(st.st_mode):
                    return False
                continue
            node = self.lower.lookup(cur)
            if node is None or not node.is_dir or not self._lower_open(parent):
                return False
            if self._hides(parent, name):
                return False
        return True

    def listdir(self, path: str) -> list[str]:
        found = self.find(path)
        if found is None:
            raise _err(errno.ENOENT, path)
        if not _found_is_dir(found):
            raise _err(errno.ENOTDIR, path)
        names: set[str] = set()
        if self._lower_open(path) and self.lower.lookup(path) is not None:
            d = self.up(path)
            names = {n for n in self.lower.listdir(path) if not (d / _whiteout(n)).exists()}
        if self.up(path).is_dir():
            names |= {n for n in os.listdir(self.up(path)) if not n.startswith(WHITEOUT_PREFIX)}
        return sorted(names)

    # -- changing ------------------------------------------------------------------------
    def _copy_up_dirs(self, path: str) -> None:
        """Make ``path`` (a merged directory) and its parents exist in the upper tree."""
        cur = ""
        for name in path.split("/") if path else []:
            cur = join(cur, name)
            if _lstat(self.up(cur)) is not None:
                continue
            node = self.lower.lookup(cur)
            if node is None:
                raise _err(errno.ENOENT, cur)
            os.mkdir(self.up(cur), 0o700)
            _apply_entry_meta(self.up(cur), node)

    def _place(self, path: str) -> bool:
        """Get ``path`` ready for a new upper entry; True if a lower one was there."""
        self._copy_up_dirs(parent_of(path))
        parent, _, name = path.rpartition("/")
        # a whited-out lower entry counts: its children must stay hidden
        lower = self._lower_open(parent) and self.lower.lookup(path) is not None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.up(parent) / _whiteout(name))
        return lower

    def _check_name(self, path: str) -> None:
        if path.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
            raise _err(errno.EPERM, path)  # reserved: it would be a whiteout in the layer
        if not self._is_dir(parent_of(path)):
            raise _err(errno.ENOENT, path)
        if self.find(path) is not None:
            raise _err(errno.EEXIST, path)

    def mkdir(self, path: str, mode: int, owner: tuple[int, int]) -> InUpper:
        self._check_name(path)
        replaced = self._place(path)
        os.mkdir(self.up(path), mode & 0o7777)
        os.chmod(self.up(path), mode & 0o7777)
        _chown(self.up(path), owner)
        if replaced:  # a deleted lower directory (or file) stays hidden below
            Path(self.up(path) / OPAQUE).touch(0o600)
        return InUpper(path, os.lstat(self.up(path)))

    def create(self, path: str, mode: int, owner: tuple[int, int], flags: int) -> int:
        """A new regular file, opened with ``flags``; its file descriptor."""
        self._check_name(path)
        self._place(path)
        fd = os.open(self.up(path), (flags | os.O_CREAT | os.O_EXCL) & ~os.O_APPEND, 0o600)
        os.fchmod(fd, mode & 0o7777)
        with contextlib.suppress(PermissionError):
            os.fchown(fd, *owner)
        return fd

    def symlink(self, path: str, target: str, owner: tuple[int, int]) -> InUpper:
        self._check_name(path)
        self._place(path)
        os.symlink(target, self.up(path))
        with contextlib.suppress(PermissionError):
            os.lchown(self.up(path), *owner)
        return InUpper(path, os.lstat(self.up(path)))

    def remove(self, path: str, *, directory: bool) -> None:
        """unlink(2) or rmdir(2): the upper entry goes, a whiteout hides the lower one."""
        found = self.find(path)
        if found is None:
            raise _err(errno.ENOENT, path)
        is_dir = _found_is_dir(found)
        if directory and not is_dir:
            raise _err(errno.ENOTDIR, path)
        if not directory and is_dir:
            raise _err(errno.EISDIR, path)
        if is_dir and self.listdir(path):
            raise _err(errno.ENOTEMPTY, path)
        self._erase(path)

    def _erase(self, path: str) -> None:
        """Hide ``path`` from the merged view: whiteout first, then the upper entry."""
        if self._lower_visible(path) is not None:
            self._copy_up_dirs(parent_of(path))
            parent, _, name = path.rpartition("/")
            Path(self.up(parent) / _whiteout(name)).touch(0o600)
        st = _lstat(self.up(path))
        if st is not None and stat.S_ISDIR(st.st_mode):
            shutil.rmtree(self.up(path))
        elif st is not None:
            os.unlink(self.up(path))

    def rename(self, old: str, new: str, *, noreplace: bool = False) -> None:
        """rename(2). A lower file must be copied up first; a directory that merges
        lower content gives EXDEV (as overlayfs without redirect_dir: ``mv`` then
        copies and deletes)."""
        if new.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
            raise _err(errno.EPERM, new)
        src = self.find(old)
        if src is None:
            raise _err(errno.ENOENT, old)
        if old == new:
            return
        if not isinstance(src, InUpper):
            raise _err(errno.EXDEV, old)  # the caller copies it up and tries again
        if stat.S_ISDIR(src.st.st_mode) and self._merges_lower(old):
            raise _err(errno.EXDEV, old)
        if new.startswith(old + "/"):
            raise _err(errno.EINVAL, new)
        dst = self.find(new)
        if dst is not None:
            self._check_replace(src, dst, new, noreplace)
        if not self._is_dir(parent_of(new)):
            raise _err(errno.ENOENT, new)
        self._place(new)
        lower_at_new = self.lower.lookup(new) is not None and self._lower_open(parent_of(new))
        st = _lstat(self.up(new))
        if st is not None and stat.S_ISDIR(st.st_mode):
            shutil.rmtree(self.up(new))  # an empty merged directory (whiteouts at most)
        if self._lower_visible(old) is not None:
            parent, _, name = old.rpartition("/")
            Path(self.up(parent) / _whiteout(name)).touch(0o600)
        os.rename(self.up(old), self.up(new))
        if stat.S_ISDIR(src.st.st_mode) and lower_at_new:
            Path(self.up(new) / OPAQUE).touch(0o600)

    def _merges_lower(self, path: str) -> bool:
        return self._lower_open(path) and self._lower_visible(path) is not None

    def _check_replace(self, src: InUpper, dst: Found, new: str, noreplace: bool) -> None:
        if noreplace:
            raise _err(errno.EEXIST, new)
        src_dir, dst_dir = stat.S_ISDIR(src.st.st_mode), _found_is_dir(dst)
        if dst_dir and not src_dir:
            raise _err(errno.EISDIR, new)
        if src_dir and not dst_dir:
            raise _err(errno.ENOTDIR, new)
        if dst_dir and self.listdir(new):
            raise _err(errno.ENOTEMPTY, new)

    # -- copy-up ------------------------------------------------------------------------
    def begin_copy_up(self) -> tuple[int, Path]:
        """A temporary file in ``work/`` for a copy-up: (fd, path)."""
        fd, name = tempfile.mkstemp(dir=self.upper.work, prefix="copyup-")
        return fd, Path(name)

    def install_copy_up(self, path: str, tmp: Path) -> bool:
        """Rename a finished copy-up into place; False (and ``tmp`` gone) if not needed now."""
        found = self.find(path)
        if not isinstance(found, InLower) or found.node.kind not in (Kind.FILE, Kind.HARDLINK):
            tmp.unlink(missing_ok=True)
            return False
        self._copy_up_dirs(parent_of(path))
        _apply_entry_meta(tmp, found.node)
        os.rename(tmp, self.up(path))
        return True

    def copy_up_special(self, path: str) -> InUpper:
        """Copy up what has no bytes to fetch: a directory, symlink or device."""
        found = self.find(path)
        if found is None:
            raise _err(errno.ENOENT, path)
        if isinstance(found, InUpper):
            return found
        node = found.node
        self._copy_up_dirs(parent_of(path))
        if node.is_dir:
            self._copy_up_dirs(path)
        elif node.kind is Kind.SYMLINK:
            os.symlink(node.entry.linkname, self.up(path))
            _apply_entry_meta(self.up(path), node)
        else:
            raise _err(errno.EPERM, path)  # devices and fifos: not changeable here
        return InUpper(path, os.lstat(self.up(path)))


def _found_is_dir(found: Found) -> bool:
    if isinstance(found, InUpper):
        return stat.S_ISDIR(found.st.st_mode)
    return found.node.is_dir


def _chown(path: Path, owner: tuple[int, int]) -> None:
    with contextlib.suppress(PermissionError):
        os.lchown(path, *owner)


def _apply_entry_meta(path: Path, node: Node) -> None:
    """Owner, mode and mtime of a lower entry on its upper copy (xattrs are not copied)."""
    e = node.entry
    _chown(path, (e.uid, e.gid))
    if e.kind is not Kind.SYMLINK:
        os.chmod(path, e.mode & 0o7777)
    os.utime(path, ns=(int(e.mtime * 1e9),) * 2, follow_symlinks=False)
