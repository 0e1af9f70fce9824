"""The mount's namespace: inode numbers for everything a mounted image shows.

::

    /                       ROOT_INODE
    ├── manifest.json       the registry's exact bytes
    ├── config.json
    ├── rootfs/             the merged tree (whiteouts applied)
    └── layers/
        └── NN-<12 hex>/    each layer's own tree, whiteout files included

Inodes are handed out on first sight (lookup or readdir) and never reused
while mounted, so they are stable for the life of the mount. Hardlinked
names of one tree share an inode (``Node.data_key``). Pure bookkeeping: no
pyfuse3, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from r8imfs.engine.merged import Node

ROOT = 1
MANIFEST = 2
CONFIG = 3
LAYERS = 4
FIRST_DYNAMIC = 16


class Tree(Protocol):
    def lookup(self, path: str) -> Node | None: ...

    def listdir(self, path: str) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class Static:
    """A synthetic file or directory (root, manifest.json, layers/)."""

    name: str
    is_dir: bool
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class InTree:
    tree: int  # 0: rootfs; 1 + i: layer i
    node: Node


Target = Static | InTree


class Namespace:
    def __init__(
        self, manifest: bytes, config: bytes, trees: list[Tree], layer_names: list[str]
    ) -> None:
        self.trees = trees
        self.layer_names = layer_names
        self._static: dict[int, Static] = {
            ROOT: Static("", True),
            MANIFEST: Static("manifest.json", False, manifest),
            CONFIG: Static("config.json", False, config),
            LAYERS: Static("layers", True),
        }
        self._targets: dict[int, InTree] = {}
        self._by_key: dict[tuple[int, object], int] = {}
        self._next = FIRST_DYNAMIC

    def get(self, ino: int) -> Target | None:
        return self._static.get(ino) or self._targets.get(ino)

    def ino_of(self, tree: int, node: Node) -> int:
        shared = node.nlink > 1 and not node.is_dir  # hardlinked names: one inode
        key: tuple[int, object] = (tree, ("link", node.data_key) if shared else node.path)
        ino = self._by_key.get(key)
        if ino is None:
            ino = self._next
            self._next += 1
            self._by_key[key] = ino
            self._targets[ino] = InTree(tree, node)
        return ino

    def children(self, ino: int) -> list[tuple[str, int]]:
        """``(name, inode)`` of a directory's entries, in a stable order."""
        if ino == ROOT:
            root_fs = self._root_of(0)
            entries = [("config.json", CONFIG), ("layers", LAYERS), ("manifest.json", MANIFEST)]
            return entries + ([("rootfs", root_fs)] if root_fs else [])
        if ino == LAYERS:
            out = []
            for i, name in enumerate(self.layer_names):
                root = self._root_of(1 + i)
                if root:
                    out.append((name, root))
            return out
        target = self._targets.get(ino)
        if target is None or not target.node.is_dir:
            return []
        tree = self.trees[target.tree]
        out = []
        for name in tree.listdir(target.node.path):
            child = tree.lookup(_join(target.node.path, name))
            if child is not None:
                out.append((name, self.ino_of(target.tree, child)))
        return out

    def lookup(self, parent: int, name: str) -> int | None:
        if parent == ROOT:
            return dict(self.children(ROOT)).get(name)
        if parent == LAYERS:
            if name in self.layer_names:
                return self._root_of(1 + self.layer_names.index(name))
            return None
        target = self._targets.get(parent)
        if target is None or not target.node.is_dir or name in (".", ".."):
            return None
        child = self.trees[target.tree].lookup(_join(target.node.path, name))
        return None if child is None else self.ino_of(target.tree, child)

    def _root_of(self, tree: int) -> int | None:
        node = self.trees[tree].lookup("")
        return None if node is None else self.ino_of(tree, node)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name
