"""Is this tar safe to put on top of an image? Checked before anything is pushed.

``affix`` appends a user's tar as a new layer. A layer replaces whatever lower
layers had at the same paths (image-spec layer.md), so a tar that carries
``src/predict.py`` silently breaks the model the original README warns
about. Rules, each refusal naming the entries:

* it must be an uncompressed tar (the layer's diff_id is the digest of
  exactly these bytes; a ``.tar.gz`` would become a gzip inside a gzip);
* no absolute names and no ``..`` components: some extractors honour them;
* no entry below a symlink of the same tar (``w -> /etc`` then ``w/passwd``
  writes through the link when extracted naively);
* symlink targets may not climb above the image root; hardlinks must point
  at an earlier entry of this tar (OCI layers cannot link into lower layers);
* anything but a directory outside the weights prefix (``src/weights/``)
  overwrites or whites out a file of the image: refused unless
  ``allow_overwrite``.

One sequential pass with ``tarfile`` in stream mode: no seeking, constant
memory, so it also works on a spooled stdin.
"""

from __future__ import annotations

import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO

from r8imfs.engine.safetar import GuardedTarInfo
from r8imfs.errors import CorruptLayer, UnsafeLayer

DEFAULT_PREFIX = "src/weights/"
#: Names listed in one refusal before "and N more".
LIST_LIMIT = 20

_MAGICS = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
}


@dataclass(frozen=True, slots=True)
class TarSummary:
    entries: int
    files: int
    file_bytes: int


@dataclass(slots=True)
class _Findings:
    unsafe: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)


def normalize(name: str) -> str:
    """A member name without ``./`` prefixes or trailing slashes (tar's own spelling)."""
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/") if name not in ("", ".") else ""


def path_problem(name: str) -> str | None:
    """Why a member name is unsafe as a path, or None."""
    if name.startswith("/"):
        return "absolute path"
    if ".." in name.split("/"):
        return "'..' in path"
    return None


def climbs_out(link_dir: str, target: str) -> bool:
    """Does a symlink in ``link_dir`` pointing at ``target`` resolve above the root?"""
    if target.startswith("/"):
        return False  # absolute targets resolve from the image root, inside it
    depth = len([p for p in link_dir.split("/") if p])
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def under(name: str, prefix: str) -> bool:
    prefix = prefix.strip("/")
    return not prefix or name == prefix or name.startswith(prefix + "/")


def _sniff(fileobj: BinaryIO, what: str) -> None:
    head = fileobj.read(8)
    if not head:
        raise CorruptLayer(f"{what} is empty, not a tar")
    for magic, kind in _MAGICS.items():
        if head.startswith(magic):
            raise CorruptLayer(
                f"{what} is {kind}-compressed; affix wants a plain tar",
                hint="decompress it first (the layer is gzip-compressed for you)",
            )
    fileobj.seek(0)


def _check_member(
    info: tarfile.TarInfo,
    name: str,
    prefix: str,
    seen: set[str],
    symlinks: set[str],
    found: _Findings,
) -> None:
    problem = path_problem(info.name)
    if problem:
        found.unsafe.append(f"{info.name} ({problem})")
        return
    parents = name.split("/")[:-1]
    for i in range(1, len(parents) + 1):
        if "/".join(parents[:i]) in symlinks:
            found.unsafe.append(f"{name} (below symlink {'/'.join(parents[:i])})")
            return
    if info.issym():
        if climbs_out(posixpath.dirname(name), info.linkname):
            found.unsafe.append(f"{name} -> {info.linkname} (symlink climbs out of the root)")
        symlinks.add(name)
    elif info.islnk():
        target = normalize(info.linkname)
        problem = path_problem(info.linkname) or (
            None if target in seen else "hardlink to a file not earlier in this tar"
        )
        if problem:
            found.unsafe.append(f"{name} => {info.linkname} ({problem})")
    if not info.isdir() and not under(name, prefix):
        found.outside.append(name)
    seen.add(name)


def check(
    fileobj: BinaryIO,
    *,
    prefix: str = DEFAULT_PREFIX,
    allow_overwrite: bool = False,
    what: str = "the tar",
) -> TarSummary:
    """Read the whole tar once; raise UnsafeLayer/CorruptLayer or return a summary."""
    _sniff(fileobj, what)
    found = _Findings()
    seen: set[str] = set()
    symlinks: set[str] = set()
    entries = files = file_bytes = 0
    try:
        with tarfile.open(fileobj=fileobj, mode="r|", tarinfo=GuardedTarInfo) as tf:
            for info in tf:
                entries += 1
                name = normalize(info.name)
                if info.isfile():
                    files += 1
                    file_bytes += info.size
                _check_member(info, name, prefix, seen, symlinks, found)
    except (tarfile.TarError, EOFError) as exc:
        raise CorruptLayer(f"{what} is not a readable tar: {exc}") from exc
    if entries == 0:
        raise CorruptLayer(f"{what} holds no entries: nothing to add")
    _raise_findings(found, prefix, allow_overwrite, what)
    return TarSummary(entries, files, file_bytes)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:LIST_LIMIT])
    more = len(names) - LIST_LIMIT
    return shown + (f" and {more} more" if more > 0 else "")


def _raise_findings(found: _Findings, prefix: str, allow_overwrite: bool, what: str) -> None:
    if found.unsafe:
        raise UnsafeLayer(f"{what} has unsafe entries: {_listing(found.unsafe)}")
    if found.outside and not allow_overwrite:
        raise UnsafeLayer(
            f"{what} writes outside {prefix.strip('/')}/, which would replace files of the "
            f"image: {_listing(found.outside)}",
            hint="pass --allow-overwrite if that is intended, or --weights-prefix to move the "
            "allowed directory",
        )
