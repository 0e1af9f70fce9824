"""``r8imfs ls IMAGE [PATH] [-l] [-R] [--json]``: the merged root filesystem, listed."""

from __future__ import annotations

import argparse
import json
import stat
import sys
import time
from typing import TYPE_CHECKING, Any

from r8imfs.cli import _image
from r8imfs.engine.entry import Kind

if TYPE_CHECKING:
    from r8imfs.ops.browse import Row

_TYPE_BITS = {
    Kind.FILE: stat.S_IFREG,
    Kind.HARDLINK: stat.S_IFREG,
    Kind.DIR: stat.S_IFDIR,
    Kind.SYMLINK: stat.S_IFLNK,
    Kind.CHARDEV: stat.S_IFCHR,
    Kind.BLOCKDEV: stat.S_IFBLK,
    Kind.FIFO: stat.S_IFIFO,
}
_JSON_TYPES = {Kind.HARDLINK: "file"}


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "ls",
        help="list files of an image (merged root filesystem), no mount needed",
        description="Lists PATH (default /) in the image's merged root filesystem: the layers\n"
        "applied in order, whiteouts honoured, as a container sees it. A directory lists\n"
        "its entries, a file itself; symlinks inside the path are followed within the\n"
        "image.\n\n" + _image.NO_FUSE,
        epilog="examples:\n"
        "  r8imfs ls r8.im/user/model                    the top directory\n"
        "  r8imfs ls -l r8.im/user/model /src/weights    modes, sizes, times, link targets\n"
        "  r8imfs ls -R r8.im/user/model /src            every path below /src\n"
        "  r8imfs ls --json -R IMAGE /src | jq '.[] | select(.size > 1e9) | .path'",
        formatter_class=_image.formatter(),
    )
    p.add_argument("image", help="image reference, e.g. r8.im/user/model:tag")
    p.add_argument("path", nargs="?", default="/", help="path in the image (default: /)")
    p.add_argument(
        "-l", dest="long", action="store_true", help="long listing: mode, links, owner, size, mtime"
    )
    p.add_argument(
        "-R", dest="recursive", action="store_true", help="everything below, one path per line"
    )
    p.add_argument("--json", action="store_true", help="a JSON list of entries instead")
    _image.add_cache_options(p)
    p.set_defaults(run=run)
    return p


def mode_string(row: Row) -> str:
    e = row.node.entry
    return stat.filemode(_TYPE_BITS[e.kind] | (e.mode & 0o7777))


def size_of(row: Row) -> int:
    e = row.node.entry
    if e.kind is Kind.SYMLINK:
        return len(e.linkname.encode("utf-8", "surrogateescape"))
    return e.size if e.kind in (Kind.FILE, Kind.HARDLINK) else 0


def shown_name(row: Row, top: str, recursive: bool) -> str:
    """The name column: the entry's name, or its path below ``top`` with -R."""
    if not recursive:
        return row.name
    return row.path[len(top) :].lstrip("/") if top else row.path


def long_lines(rows: list[Row], top: str, recursive: bool) -> list[str]:
    cells = []
    for row in rows:
        e = row.node.entry
        size = f"{e.devmajor}, {e.devminor}" if e.kind in (Kind.CHARDEV, Kind.BLOCKDEV) else ""
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.mtime))
        name = shown_name(row, top, recursive)
        if e.kind is Kind.SYMLINK:
            name += f" -> {e.linkname}"
        cells.append(
            (
                mode_string(row),
                str(row.node.nlink),
                str(e.uid),
                str(e.gid),
                size or str(size_of(row)),
                when,
                name,
            )
        )
    widths = [max((len(c[i]) for c in cells), default=0) for i in range(6)]
    right = (False, True, False, False, True, False)
    return [
        " ".join(
            [
                *(
                    v.rjust(w) if r else v.ljust(w)
                    for v, w, r in zip(c[:6], widths, right, strict=True)
                ),
                c[6],
            ]
        )
        for c in cells
    ]


def as_json(row: Row) -> dict[str, Any]:
    e = row.node.entry
    return {
        "path": "/" + row.path,
        "type": _JSON_TYPES.get(e.kind, e.kind.value),
        "mode": f"{e.mode & 0o7777:04o}",
        "size": size_of(row),
        "uid": e.uid,
        "gid": e.gid,
        "mtime": int(e.mtime),
        "nlink": row.node.nlink,
        "link": e.linkname if e.kind is Kind.SYMLINK else None,
    }


async def run(args: argparse.Namespace) -> None:
    from r8imfs.ops.browse import listing

    async with _image.opened(args, args.image, _image.board(args)) as files:
        found = listing(files.rootfs, args.path, recursive=args.recursive, long=args.long)
    rows, top = found.rows, found.top
    if args.json:
        json.dump([as_json(r) for r in rows], sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.long:
        sys.stdout.write("".join(line + "\n" for line in long_lines(rows, top, args.recursive)))
    else:
        sys.stdout.write("".join(shown_name(r, top, args.recursive) + "\n" for r in rows))
