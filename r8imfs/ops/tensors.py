"""``tensors``: the headers of an image's model files, and nothing more of them.

A header is read from the start of the file in growing ranges (``FIRST_READ``
first, then what the parser says it needs) straight from the layer reader,
bypassing the 4 MiB decoded blocks that serve sequential copies: in a plain
or seekable-zstd layer only the blob blocks under the header move (the blob
cache's block granularity, 4 MiB); in a gzip layer the index pass has
already decoded the layer once (and kept its decoded copy), so the header
is a local read.
"""

from __future__ import annotations

from r8imfs import _threads
from r8imfs.engine.entry import Kind
from r8imfs.engine.merged import Node
from r8imfs.engine.readat import read_entry
from r8imfs.errors import BadModelHeader, PathNotFound
from r8imfs.image.image import ImageFiles
from r8imfs.models import header as model
from r8imfs.models.incomplete import Incomplete
from r8imfs.ops.browse import preorder, readable, resolve

WEIGHTS_DIR = "src/weights"
FIRST_READ = 64 * 1024
#: a header needing more than this is refused (safetensors' own limit is 100 MB)
MAX_READ = 256 * 1024 * 1024


def model_files(files: ImageFiles, paths: list[str]) -> list[Node]:
    """The files to read: each PATH (a directory gives the model files under it);
    with no PATH, every model file under ``src/weights/``."""
    tree = files.rootfs
    if not paths:
        if tree.lookup(WEIGHTS_DIR) is None:
            raise PathNotFound("the image has no /src/weights/ (name the model files to read)")
        paths = [WEIGHTS_DIR]
    found: list[Node] = []
    for path in paths:
        node = resolve(tree, path, follow=True)
        if not node.is_dir:
            found.append(readable(node))
            continue
        below = [
            n
            for n in preorder(tree, node)
            if n.kind in (Kind.FILE, Kind.HARDLINK) and model.is_model_file(n.path)
        ]
        if not below:
            raise PathNotFound(f"no .safetensors or .gguf files under /{node.path}")
        found.extend(below)
    return found


async def read_header(files: ImageFiles, node: Node) -> model.ModelHeader:
    """Parse the header of ``node``, reading only as far as the header goes."""
    name = f"/{node.path}"
    size = node.entry.size
    data = b""
    want = min(FIRST_READ, size)
    while True:
        if want > len(data):
            data += await _read(files, node, len(data), want - len(data))
        try:
            return model.parse(data, size, name)
        except Incomplete as more:
            if more.need > min(size, MAX_READ) or len(data) >= size:
                raise BadModelHeader(
                    f"{name}: header needs {more.need} bytes, the file has {size}"
                ) from None
            want = min(more.need, size)


async def _read(files: ImageFiles, node: Node, offset: int, size: int) -> bytes:
    reader = files.layers[node.layer].reader
    return await _threads.run_sync(read_entry, reader, node.entry, offset, size)
