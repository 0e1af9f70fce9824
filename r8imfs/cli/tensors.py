"""``r8imfs tensors IMAGE [PATH...] [--json]``: what a model image's weights hold."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from r8imfs._units import human_size
from r8imfs.cli import _image

if TYPE_CHECKING:
    from r8imfs.models.header import ModelHeader

#: metadata values longer than this are cut in the table (never in --json)
SHOWN_VALUE = 100


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "tensors",
        help="list the tensors of the model files in an image, reading only their headers",
        description="For every .safetensors (and .gguf) file under /src/weights/, or the\n"
        "PATHs given (files, or directories to search), prints each tensor's name,\n"
        "dtype, shape and size in bytes, and the file's metadata (safetensors\n"
        "__metadata__; GGUF key-values, long arrays summarised). GGUF shapes are as\n"
        "stored: ggml order, the fastest-varying dimension first.\n\n"
        "Only the headers are read: the 8-byte length and the JSON of a safetensors\n"
        "file, with range reads where the layer allows random access (plain and\n"
        "seekable-zstd layers; the blob cache reads 4 MiB blocks). A gzip layer has to\n"
        "be decoded once to be indexed at all; that decoded copy is then reused.\n"
        "A malformed header (length past the end of the file, invalid JSON, tensors\n"
        "that overlap or run out of the file) is an error naming the file.\n\n" + _image.NO_FUSE,
        epilog="examples:\n"
        "  r8imfs tensors r8.im/user/model\n"
        "  r8imfs tensors r8.im/user/model /src/weights/unet\n"
        "  r8imfs tensors --json IMAGE | jq '.[].tensors | length'",
        formatter_class=_image.formatter(),
    )
    p.add_argument("image", help="image reference, e.g. r8.im/user/model:tag")
    p.add_argument("paths", nargs="*", metavar="PATH", help="model files or directories")
    p.add_argument(
        "--json",
        action="store_true",
        help="a JSON list of {path, format, size, metadata, tensors: "
        "[{name, dtype, shape, offset, size}]}",
    )
    _image.add_cache_options(p)
    p.set_defaults(run=run)
    return p


def table(h: ModelHeader) -> str:
    total = sum(max(t.size, 0) for t in h.tensors)
    lines = [
        f"{h.path}  {h.format}, {human_size(h.size)}, {len(h.tensors)} tensors "
        f"({human_size(total)})"
    ]
    for key, value in h.metadata.items():
        text = value if isinstance(value, str) else json.dumps(value)
        if len(text) > SHOWN_VALUE:
            text = text[: SHOWN_VALUE - 3] + "..."
        lines.append(f"  {key}: {text}")
    rows = [("NAME", "DTYPE", "SHAPE", "BYTES")]
    rows += [(t.name, t.dtype, json.dumps(list(t.shape)), str(t.size)) for t in h.tensors]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        lines.append(
            "  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> None:
    from r8imfs.ops.tensors import model_files, read_header

    async with _image.opened(args, args.image, _image.board(args), sparse=True) as files:
        headers = [await read_header(files, node) for node in model_files(files, args.paths)]
    if args.json:
        json.dump([h.as_json() for h in headers], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("\n\n".join(table(h) for h in headers) + "\n")
