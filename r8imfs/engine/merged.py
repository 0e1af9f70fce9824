"""Filesystem trees from layer entries: the merged rootfs, and each layer as stored.

Theory of operation (OCI image-spec ``layer.md``: "Applying Changesets",
"Whiteouts", "Opaque Whiteout")
--------------------------------------------------------------------------
Layers apply bottom first. Within one layer, in this order:

1. **Opaque whiteouts**: ``D/.wh..wh..opq`` hides every child of ``D`` that
   came from lower layers. It applies before the layer's own entries wherever
   it sits in the tar: some producers write it before ``D``'s own entry.
2. **Whiteouts**: ``D/.wh.name`` removes ``D/name``, and its subtree if a
   directory, from the lower layers. Whiteouts never touch entries of their
   own layer (spec: "files that are present in the same layer as a whiteout
   file can only be hidden by whiteout files in subsequent layers").
3. **Entries**, in tar order: a directory over a directory merges (the upper
   metadata wins, children stay); anything else replaces what was there,
   subtree included. Missing parents are created as implicit directories
   (mode 0755, owned by the layer that needed them); a non-directory standing
   where a parent must be is replaced, as overlayfs snapshotters see it (a
   naive single-directory extractor would follow a symlink there instead).

Whiteout files, and AUFS ``.wh..wh.*`` metadata with everything under it,
never appear in the merged tree. Hardlinks resolve to their target entry
within the layer (following link chains); a target missing from the layer
falls back to what lower layers left at that path, as containerd's applier
links to files already on disk; a hardlink to nothing, or to a directory, is
dropped. A hardlink node carries the *target's* entry and layer, so it reads
the same bytes and shows the same metadata; ``Node.data_key`` groups
hardlinked names and ``nlink`` counts them.

``LayerTree`` is one layer as stored (whiteout files included, no lower
layers), for ``layers/NN/`` views; it shares the lookup API with ``MergedTree``.
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from r8imfs.engine.entry import Entry, Kind, join, normalise_path, parent_of
from r8imfs.errors import UnsafeLayer

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
META_PREFIX = ".wh..wh."
IMPLICIT_DIR_MODE = 0o755
MAX_LINK_HOPS = 32


@dataclass(frozen=True, slots=True)
class Node:
    """One name in a tree. ``entry`` is the metadata and data source (for a
    hardlink, the target's entry); ``layer`` is the index of the layer whose
    blob holds that entry; ``implicit`` marks directories no tar entry named."""

    path: str
    entry: Entry
    layer: int
    nlink: int = 1
    implicit: bool = False

    @property
    def kind(self) -> Kind:
        return self.entry.kind

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def is_dir(self) -> bool:
        return self.entry.kind is Kind.DIR

    @property
    def data_key(self) -> tuple[int, int]:
        """Equal for names sharing one inode (hardlinks); meaningful for non-dirs."""
        return (self.layer, self.entry.ordinal)


_Rec = tuple[Entry, int, bool]  # entry, layer, implicit


class _Builder:
    """Mutable tree under construction: path → record, dir → child names."""

    def __init__(self, root_layer: int) -> None:
        self.nodes: dict[str, _Rec] = {"": (_implicit_dir(""), root_layer, True)}
        self.children: dict[str, dict[str, None]] = {"": {}}
        #: an entry was put under a name not its own (a hardlink): names may share it
        self.linked = False

    def is_dir(self, path: str) -> bool:
        return path in self.children

    def remove(self, path: str) -> None:
        if not path or self.nodes.pop(path, None) is None:
            return
        parent, _, name = path.rpartition("/")
        self.children[parent].pop(name, None)
        if path in self.children:
            self._drop_subtree(path)

    def clear_children(self, path: str) -> None:
        if path in self.children:
            self._drop_subtree(path)
            self.children[path] = {}

    def _drop_subtree(self, top: str) -> None:
        stack = [top]
        while stack:
            d = stack.pop()
            for name in self.children.pop(d, {}):
                child = join(d, name)
                del self.nodes[child]
                if child in self.children:
                    stack.append(child)

    def ensure_dir(self, path: str, layer: int) -> None:
        missing = []
        while path not in self.children:
            missing.append(path)
            path = parent_of(path)
        for p in reversed(missing):
            self.remove(p)  # a non-directory in the way
            self._add(p, (_implicit_dir(p), layer, True))

    def put(self, path: str, entry: Entry, layer: int, dir_layer: int) -> None:
        if not path:
            if entry.kind is Kind.DIR:
                self.nodes[""] = (entry, layer, False)
            return
        if entry.path != path:
            self.linked = True
        parent, _, name = path.rpartition("/")
        siblings = self.children.get(parent)
        if siblings is None:
            self.ensure_dir(parent, dir_layer)
            siblings = self.children[parent]
        old = self.nodes.get(path)
        if old is not None:
            if old[0].kind is Kind.DIR and entry.kind is Kind.DIR:
                self.nodes[path] = (entry, layer, False)
                return
            self.remove(path)
        # _add, inline: a layer of 100,000 files comes through here
        self.nodes[path] = (entry, layer, False)
        siblings[name] = None
        if entry.kind is Kind.DIR:
            self.children[path] = {}

    def _add(self, path: str, rec: _Rec) -> None:
        self.nodes[path] = rec
        parent, _, name = path.rpartition("/")
        self.children[parent][name] = None
        if rec[0].kind is Kind.DIR:
            self.children[path] = {}


def _implicit_dir(path: str) -> Entry:
    return Entry(path, Kind.DIR, mode=IMPLICIT_DIR_MODE, ordinal=-1)


def _resolve_link(
    entry: Entry, own: dict[str, Entry], layer: int, below: _Builder | None
) -> tuple[Entry, int] | None:
    """(target entry, its layer) for a hardlink, or None if it has no target."""
    target = entry.linkname
    for _ in range(MAX_LINK_HOPS):
        found = own.get(target)
        if found is None:
            break
        if found.kind is not Kind.HARDLINK:
            return None if found.kind is Kind.DIR else (found, layer)
        target = found.linkname
    else:
        return None  # a cycle
    rec = below.nodes.get(target) if below is not None else None
    if rec is None or rec[0].kind is Kind.DIR:
        return None
    return rec[0], rec[1]


class _Tree:
    """Read-only lookups shared by MergedTree and LayerTree.

    A ``Node`` is made on first sight of its name (lookup, listing, iteration)
    and kept: a mount looks at a few names of a tree of 100,000. Two threads
    may both make one; they are equal, and either is kept.
    """

    __slots__ = ("_recs", "_nodes", "_listing", "_links")

    def __init__(self, builder: _Builder) -> None:
        self._recs = builder.nodes
        self._listing = {d: tuple(sorted(names)) for d, names in builder.children.items()}
        self._nodes: dict[str, Node] = {}
        #: names per (layer, ordinal) when some entry has several (hardlinks)
        self._links: Counter[tuple[int, int]] | None = None
        if builder.linked:
            self._links = Counter(
                (layer, e.ordinal) for e, layer, _ in self._recs.values() if e.kind is not Kind.DIR
            )

    def _node(self, path: str) -> Node | None:
        node = self._nodes.get(path)
        if node is None:
            rec = self._recs.get(path)
            if rec is None:
                return None
            e, layer, implicit = rec
            node = self._nodes[path] = Node(path, e, layer, self._nlink(path, e, layer), implicit)
        return node

    def _nlink(self, path: str, e: Entry, layer: int) -> int:
        if e.kind is Kind.DIR:  # "." and each subdirectory's ".."
            recs = self._recs
            return 2 + sum(
                1 for name in self._listing[path] if recs[join(path, name)][0].kind is Kind.DIR
            )
        return 1 if self._links is None else self._links[(layer, e.ordinal)]

    def lookup(self, path: str) -> Node | None:
        """The node at ``path`` ("/a/b", "a/b/" and "./a/b" all work), or None."""
        if path in self._recs:
            return self._node(path)
        try:
            return self._node(normalise_path(path))
        except UnsafeLayer:
            return None

    def node(self, path: str) -> Node:
        node = self.lookup(path)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, "no such file or directory", path)
        return node

    def listdir(self, path: str = "") -> tuple[str, ...]:
        """Sorted child names of the directory at ``path``."""
        node = self.node(path)
        if not node.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
        return self._listing[node.path]

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self.lookup(path) is not None

    def __len__(self) -> int:
        return len(self._recs)

    def __iter__(self) -> Iterator[Node]:
        """Every node, depth first, parents before children, names sorted."""
        stack = [""]
        while stack:
            path = stack.pop()
            node = self._node(path)
            assert node is not None
            yield node
            if node.is_dir:
                stack.extend(join(path, n) for n in reversed(self._listing[path]))


class MergedTree(_Tree):
    """The root filesystem of an image: layers applied with OCI whiteouts."""

    __slots__ = ()

    @classmethod
    def build(cls, layers: Sequence[Sequence[Entry]]) -> MergedTree:
        """``layers`` bottom first; node ``layer`` values index into it."""
        b = _Builder(0)
        for index, entries in enumerate(layers):
            _apply_layer(b, entries, index)
        return cls(b)


def _apply_layer(b: _Builder, entries: Sequence[Entry], layer: int) -> None:
    opaque: list[str] = []
    whiteouts: list[str] = []
    regular: list[Entry] = []
    for e in entries:
        name = e.name
        if e.path.startswith(META_PREFIX):
            continue  # AUFS bookkeeping (.wh..wh.plnk/ and friends) at the root
        if not name.startswith(WHITEOUT_PREFIX):
            regular.append(e)
        elif name == OPAQUE:
            opaque.append(e.parent)
        elif not name.startswith(META_PREFIX) and len(name) > len(WHITEOUT_PREFIX):
            whiteouts.append(join(e.parent, name[len(WHITEOUT_PREFIX) :]))
    for d in opaque:
        b.clear_children(d)
    for path in whiteouts:
        b.remove(path)
    own = {e.path: e for e in regular}
    for e in regular:
        if e.kind is Kind.HARDLINK:
            target = _resolve_link(e, own, layer, b)
            if target is not None:
                b.put(e.path, target[0], target[1], layer)
        else:
            b.put(e.path, e, layer, layer)


class LayerTree(_Tree):
    """One layer as stored: whiteout files included, hardlinks resolved."""

    __slots__ = ()

    @classmethod
    def build(cls, entries: Sequence[Entry], layer: int = 0) -> LayerTree:
        b = _Builder(layer)
        own = {e.path: e for e in entries}
        for e in entries:
            if e.kind is Kind.HARDLINK:
                target = _resolve_link(e, own, layer, None)
                if target is not None:
                    b.put(e.path, target[0], layer, layer)
            else:
                b.put(e.path, e, layer, layer)
        return cls(b)
