"""An upper directory's tree as one layer tar, for ``r8imfs commit``.

The tree is already spelled as a layer (``upper.py``): directories, files,
symlinks, and empty ``.wh.NAME`` / ``.wh..wh..opq`` files for deletions and
replaced directories, which go into the tar as they are (image-spec
``layer.md``). Entries are written parents first in sorted order, so the
same tree always gives the same tar bytes (apart from what changed), with
PAX headers for long names and large files.

A file being written while the commit reads it would make a torn layer: the
size and mtime of each file are compared before and after its bytes are
copied, and a change fails the commit (nothing is pushed under a tag then).
"""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from r8imfs.engine.upper import walk
from r8imfs.errors import R8imfsError

PIECE = 1024 * 1024


class ChangedDuringCommit(R8imfsError):
    """A file of the upper directory changed while its layer was being written."""


@dataclass(frozen=True, slots=True)
class TarStats:
    entries: int
    files: int
    file_bytes: int


def write_layer_tar(tree: Path, out: BinaryIO) -> TarStats:
    """Write every entry under ``tree`` to ``out`` as an uncompressed PAX tar."""
    entries = files = size = 0
    with tarfile.TarFile(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, copybufsize=PIECE) as tf:
        for rel, st in walk(tree):
            info = _info(tree, rel, st)
            if info.isreg():
                _add_file(tf, info, tree / rel, st)
                files += 1
                size += info.size
            else:
                tf.addfile(info)
            entries += 1
    return TarStats(entries, files, size)


def _info(tree: Path, rel: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(rel)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = st.st_mtime
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(tree / rel)
    elif stat.S_ISREG(st.st_mode):
        info.type = tarfile.REGTYPE
        info.size = st.st_size
    else:
        raise R8imfsError(f"{tree / rel}: not a file, directory or symlink; cannot commit it")
    return info


def _add_file(tf: tarfile.TarFile, info: tarfile.TarInfo, path: Path, st: os.stat_result) -> None:
    with path.open("rb") as f:
        tf.addfile(info, _Exact(f, info.size, path))
        after = os.fstat(f.fileno())
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        raise ChangedDuringCommit(
            f"{path} changed while it was being committed; nothing was tagged",
            hint="let writers finish, then commit again",
        )


class _Exact:
    """A file read as exactly ``size`` bytes: a shrink fails instead of padding."""

    def __init__(self, f: BinaryIO, size: int, path: Path) -> None:
        self._f = f
        self._left = size
        self._path = path

    def read(self, n: int = -1) -> bytes:
        want = self._left if n < 0 else min(n, self._left)
        data = self._f.read(want)
        if len(data) < want:
            raise ChangedDuringCommit(f"{self._path} shrank while it was being committed")
        self._left -= len(data)
        return data
