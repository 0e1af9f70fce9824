"""The benchmark image: built in code, pushed with r8imfs's own client.

Layers, bottom first (Docker v2 schema 2 manifest, gzip -6 layers, as cog
pushes to r8.im):

0. ``base``: 10,000 small files in ~1,000 directories (a Python
   site-packages-like tree plus ``.so``-like binaries) of mixed text and
   binary content, ~220 MiB of tar that gzip makes ~100 MiB; ``ADD file:… in /``;
1. ``src``: ``COPY . /src``: predict.py and cog.yaml;
2. ``weights``: ``src/weights/model.bin`` (1 GiB of float16-like bytes, see
   ``data``), ``tokenizer.json`` and ``config.json``; ``created_by`` ending
   in `` # weights``, comment ``weights``.

``--size-scale`` multiplies the byte sizes (not the file count). Every
layer is written once to a local ``.tar.gz`` (which the engine and zstd
benchmarks read too), with its diff_id and digest computed on the way.
"""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
import threading
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from r8imfs.oci import mediatypes as mt
from r8imfs.oci import mutate
from r8imfs.oci.manifest import Descriptor
from r8imfs.oci.reference import parse
from r8imfs.registry.client import RegistryClient
from r8imfs.registry.push import push_manifest
from r8imfs.registry.upload import upload_stream
from tools.bench.common import GiB, MiB
from tools.bench.data import Float16Weights, make_pool
from tools.demoimage import COG_YAML, MTIME, PREDICT

MANIFEST_TYPE = mt.DOCKER_MANIFEST
GZIP_LEVEL = 6
BASE_FILES = 10_000
BASE_TAR_BYTES = 220 * MiB
WEIGHTS_BYTES = 1 * GiB
REPO = "bench/model"


@dataclass(frozen=True, slots=True)
class LayerFile:
    """A layer blob on local disk and what its descriptor and config need."""

    path: Path
    digest: str
    size: int  # compressed
    diff_id: str
    usize: int  # uncompressed tar
    created_by: str
    comment: str | None
    files: int  # regular files in it
    dirs: int = 0  # directory entries in it

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(mutate.layer_type_for(MANIFEST_TYPE, "gzip"), self.digest, self.size)


@dataclass(frozen=True, slots=True)
class BenchImage:
    host: str
    base: LayerFile
    src: LayerFile
    weights: LayerFile
    model_bytes: int  # size of src/weights/model.bin
    weights_bytes: int  # all regular files under src/weights/

    @property
    def layers(self) -> tuple[LayerFile, ...]:
        return (self.base, self.src, self.weights)

    @property
    def ref(self) -> str:
        return f"{self.host}/{REPO}:v1"

    @property
    def weights_ref(self) -> str:
        """The same weights layer alone, for the zstd benchmark."""
        return f"{self.host}/{REPO}:weights-only"

    def blob_url(self, layer: LayerFile) -> str:
        return f"http://{self.host}/v2/{REPO}/blobs/{layer.digest}"

    @property
    def total_size(self) -> int:
        return sum(layer.size for layer in self.layers)


class GzipLayerWriter:
    """Write-only file for ``tarfile``: tar in, gzip -6 out; hashes both sides."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out = path.open("wb")
        self._zlib = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        self._tar_hash = hashlib.sha256()
        self._blob_hash = hashlib.sha256()
        self.usize = 0
        self.size = 0

    def write(self, data: bytes) -> int:
        self._tar_hash.update(data)
        self.usize += len(data)
        self._put(self._zlib.compress(data))
        return len(data)

    def tell(self) -> int:
        return self.usize

    def _put(self, data: bytes) -> None:
        if data:
            self._blob_hash.update(data)
            self._out.write(data)
            self.size += len(data)

    def finish(self, created_by: str, comment: str | None, files: int, dirs: int = 0) -> LayerFile:
        self._put(self._zlib.flush())
        self._out.close()
        return LayerFile(
            self.path,
            "sha256:" + self._blob_hash.hexdigest(),
            self.size,
            "sha256:" + self._tar_hash.hexdigest(),
            self.usize,
            created_by,
            comment,
            files,
            dirs,
        )


def _info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime = size, kind, MTIME
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def _tar(writer: GzipLayerWriter) -> tarfile.TarFile:
    return tarfile.open(  # type: ignore[call-overload, no-any-return]
        fileobj=writer, mode="w", format=tarfile.PAX_FORMAT, copybufsize=4 * MiB
    )


def write_base(path: Path, tar_bytes: int, files: int = BASE_FILES, seed: int = 2) -> LayerFile:
    """~``files`` small files in ~``files // 10`` directories, ~``tar_bytes`` of tar."""
    rng = random.Random(seed)
    pool = make_pool(32 * MiB, rng)
    sizes = [min(rng.lognormvariate(8.5, 1.6), 8 * MiB) for _ in range(files)]
    scale = tar_bytes / sum(sizes)
    writer = GzipLayerWriter(path)
    seen_dirs: set[str] = set()
    with _tar(writer) as tf:
        for i, raw_size in enumerate(sizes):
            size = max(0, min(int(raw_size * scale), len(pool) - 1))
            name = _base_name(i)
            parts = name.split("/")
            for depth in range(1, len(parts)):
                d = "/".join(parts[:depth])
                if d not in seen_dirs:
                    seen_dirs.add(d)
                    tf.addfile(_info(d, kind=tarfile.DIRTYPE))
            start = rng.randrange(0, len(pool) - size)
            tf.addfile(_info(name, size), io.BytesIO(pool[start : start + size]))
    return writer.finish(
        "/bin/sh -c #(nop) ADD file:bench-rootfs in / ", None, files, len(seen_dirs)
    )


def _base_name(i: int) -> str:
    """About ten files per directory, as in a Python image (~1,000 directories)."""
    if i % 20 == 0:
        return f"usr/lib/x86_64-linux-gnu/lib{i}.so.1"
    pkg, sub = i % 160, (i // 160) % 5
    return f"usr/lib/python3.11/site-packages/pkg{pkg:03d}/sub{sub}/mod{i}.py"


def write_src(path: Path) -> LayerFile:
    writer = GzipLayerWriter(path)
    with _tar(writer) as tf:
        tf.addfile(_info("src", kind=tarfile.DIRTYPE))
        for name, body in (("src/predict.py", PREDICT), ("src/cog.yaml", COG_YAML)):
            tf.addfile(_info(name, len(body)), io.BytesIO(body))
    return writer.finish("COPY . /src # buildkit", "cog", 2)


def write_weights(path: Path, model_bytes: int) -> tuple[LayerFile, int]:
    """The weights layer; also the bytes of its regular files."""
    rng = random.Random(3)
    words = ("tok", "en", "ize", "r", "▁the", "</s>")
    tokenizer = " ".join(rng.choices(words, k=max(1, model_bytes // 2000))).encode()
    config = b'{"hidden_size": 4096, "torch_dtype": "float16"}\n'
    writer = GzipLayerWriter(path)
    with _tar(writer) as tf:
        tf.addfile(_info("src/weights", kind=tarfile.DIRTYPE))
        tf.addfile(_info("src/weights/config.json", len(config)), io.BytesIO(config))
        tf.addfile(_info("src/weights/tokenizer.json", len(tokenizer)), io.BytesIO(tokenizer))
        model = Float16Weights(model_bytes)
        tf.addfile(_info("src/weights/model.bin", model_bytes), model)
    layer = writer.finish("COPY ./weights /src/weights # weights", "weights", 3)
    return layer, len(config) + len(tokenizer) + model_bytes


def build_layers(work: Path, scale: float) -> tuple[LayerFile, LayerFile, LayerFile, int]:
    """The three layer files; base and weights are compressed in parallel threads."""
    out: dict[str, object] = {}
    model_bytes = max(int(WEIGHTS_BYTES * scale) // 2 * 2, 2)

    def base() -> None:
        out["base"] = write_base(work / "base.tar.gz", int(BASE_TAR_BYTES * scale))

    thread = threading.Thread(target=base)
    thread.start()
    weights, weights_bytes = write_weights(work / "weights.tar.gz", model_bytes)
    thread.join()
    src = write_src(work / "src.tar.gz")
    return out["base"], src, weights, weights_bytes  # type: ignore[return-value]


async def push(host: str, layers: tuple[LayerFile, ...], tag: str) -> str:
    """Upload the layer files that are not there yet, then config and manifest."""
    ref = parse(f"{host}/{REPO}:{tag}")
    async with RegistryClient() as client:
        for layer in layers:
            if await client.head_blob(ref.repository, layer.digest) is None:
                await upload_stream(client, ref.repository, _read(layer.path))
        news = [mutate.NewLayer(x.descriptor, x.diff_id, x.created_by, x.comment) for x in layers]
        config = mutate.append_layers(mutate.new_config(), news)
        descriptors = [x.descriptor for x in layers]
        return await push_manifest(client, ref, MANIFEST_TYPE, config, descriptors)


async def _read(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while data := f.read(4 * MiB):
            yield data
