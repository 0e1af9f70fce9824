"""One member of a layer tar, as the index keeps it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from r8imfs.errors import UnsafeLayer


class Kind(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHARDEV = "chardev"
    BLOCKDEV = "blockdev"
    FIFO = "fifo"


@dataclass(frozen=True, slots=True)
class Entry:
    """A tar member. ``path`` is normalised ("" is the root, no slashes at
    either end); ``data_offset`` is where the body starts in the uncompressed
    tar stream; ``ordinal`` is the member's position in the tar. ``linkname``
    is the symlink target as stored, or the normalised hardlink target.
    ``sparse`` lists the (offset, length) data extents of a sparse file, whose
    stored bytes are those extents back to back."""

    path: str
    kind: Kind
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = 0.0
    size: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict, hash=False)
    data_offset: int = 0
    ordinal: int = 0
    sparse: tuple[tuple[int, int], ...] = ()

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def parent(self) -> str:
        return self.path.rpartition("/")[0]


def normalise_path(name: str) -> str:
    """``./a//b/`` → ``a/b``; ``/`` and ``.`` → ``""``. ``..`` is refused."""
    parts = name.split("/")
    if "" not in parts and "." not in parts and ".." not in parts:
        return name  # already normal (most names: checked in C, nothing rebuilt)
    parts = [p for p in parts if p and p != "."]
    if ".." in parts:
        raise UnsafeLayer(f"tar member {name!r} climbs out of the layer root with '..'")
    return "/".join(parts)


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name
