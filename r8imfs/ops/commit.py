"""``commit``: a writable mount's changes pushed as one new layer on its image.

The upper directory (``archive.upper``) already holds the changes spelled
as a layer: files, ``.wh.NAME`` whiteouts and ``.wh..wh..opq`` opaque
markers. A commit, in an order that leaves no tag behind on failure:

1. tar the upper tree to a temporary file next to it (``archive.uppertar``;
   a file written meanwhile fails the commit);
2. the ``affix`` guard on that tar (``archive.tarcheck.check``): anything but
   directories outside ``--weights-prefix`` is refused unless
   ``--allow-overwrite``; whiteouts of code count as changes to code;
3. upload it: gzip through affix's one-pass path (``upload_tar_as_gzip``),
   or zstd:chunked (a Docker manifest then becomes OCI, which zstd needs);
4. the base's layers are placed in the destination by HEAD or
   cross-repository mount from the mounted image's repository (never
   downloaded); then the config with one history entry, the manifest last.

The base is the exact manifest the mount served (kept in the upper
directory), not whatever its tag names now. Each commit is that base plus
one layer of *all* the mount's changes, so committing twice gives two
sibling images, not a stack. A successful commit is recorded in the upper
directory with a fingerprint of its tree, so ``umount`` can tell committed
changes from uncommitted ones.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from r8imfs._threads import run_io, run_sync
from r8imfs._units import human_size
from r8imfs.engine import tarcheck
from r8imfs.engine.codecs.zstdwrite import SeekableResult, write_chunked
from r8imfs.engine.upper import UpperDir
from r8imfs.engine.uppertar import TarStats, write_layer_tar
from r8imfs.errors import R8imfsError, UnsupportedMediaType
from r8imfs.oci import mutate
from r8imfs.oci import reference as oci_reference
from r8imfs.oci.config import ImageConfig
from r8imfs.oci.digest import short
from r8imfs.oci.manifest import Descriptor, Manifest, parse
from r8imfs.oci.reference import Reference
from r8imfs.ops.common import (
    Child,
    Context,
    NewImage,
    Pushed,
    Source,
    manifest_annotations,
    needed_layers,
    place_blobs,
    push_images,
)
from r8imfs.ops.layerstream import DEFAULT_LEVEL, PIECE, UploadedLayer, upload_tar_as_gzip
from r8imfs.registry.client import RegistryClient
from r8imfs.registry.upload import Body, upload_stream

CREATED_BY = "r8imfs commit"


class NothingToCommit(R8imfsError):
    """The upper directory holds no change."""


@dataclass(frozen=True, slots=True)
class CommitOptions:
    message: str | None = None
    zstd: bool = False
    weights_prefix: str = tarcheck.DEFAULT_PREFIX
    allow_overwrite: bool = False
    level: int = DEFAULT_LEVEL


async def commit(
    client: RegistryClient,
    upper: UpperDir,
    dest: Reference,
    options: CommitOptions,
    ctx: Context,
) -> Pushed:
    if not await run_io(upper.has_changes):
        raise NothingToCommit(f"nothing to commit: no change in {upper.tree}")
    fingerprint = await run_io(upper.fingerprint)
    origin = await run_io(upper.origin)
    base_repo = oci_reference.parse_repository(origin.repository).repository
    child = await run_io(_base, upper)
    fd, name = tempfile.mkstemp(dir=upper.root, prefix="commit-", suffix=".tar")
    os.close(fd)
    tar = Path(name)
    try:
        stats = await run_sync(_write_tar, upper, tar)
        await run_sync(_guard, tar, options)
        ctx.notify(
            f"changes: {stats.entries} entries, {stats.files} file(s), "
            f"{human_size(stats.file_bytes)}; checked"
        )
        layer, kind = await _upload(client, dest, tar, options, ctx)
    finally:
        await run_io(tar.unlink, True)
    ctx.notify(f"new layer {short(layer.blob.digest)}: {human_size(layer.blob.size)} {kind}")
    image = _new_image(child, layer, kind, options)
    source = Source(Reference(base_repo, None, origin.manifest_digest), (child,))
    await place_blobs(client, dest.repository, needed_layers(source, base_repo), ctx)
    pushed = await push_images(client, dest, source, [image])
    await run_io(upper.note_commit, str(pushed), fingerprint)
    return pushed


def _base(upper: UpperDir) -> Child:
    manifest_raw, config_raw = upper.base()
    manifest = parse(manifest_raw)
    if not isinstance(manifest, Manifest):
        raise UnsupportedMediaType(f"{upper.root}: the base is an index, not an image manifest")
    return Child(manifest, ImageConfig.parse(config_raw))


def _write_tar(upper: UpperDir, tar: Path) -> TarStats:
    with tar.open("wb") as f:
        return write_layer_tar(upper.tree, f)


def _guard(tar: Path, options: CommitOptions) -> None:
    """affix's guard (``archive.tarcheck``), on the layer about to be pushed."""
    with tar.open("rb") as f:
        tarcheck.check(
            f,
            prefix=options.weights_prefix,
            allow_overwrite=options.allow_overwrite,
            what="this commit",
        )


async def _upload(
    client: RegistryClient, dest: Reference, tar: Path, options: CommitOptions, ctx: Context
) -> tuple[UploadedLayer, str]:
    size = (await run_io(tar.stat)).st_size
    bar = ctx.progress.bar("layer", size)
    try:
        if not options.zstd:
            layer = await upload_tar_as_gzip(
                client, dest.repository, tar, level=options.level, progress=bar.advance
            )
            return layer, "gzip"
        return await _upload_zstd(client, dest, tar, bar.advance), "zstd"
    finally:
        bar.finish()


async def _upload_zstd(
    client: RegistryClient, dest: Reference, tar: Path, progress: Callable[[int], None]
) -> UploadedLayer:
    """zstd:chunked, as ``r8imfs zstd`` writes it (its TOC lets any mount, ours or
    containers/storage's, read the layer lazily and verified), to a file beside
    the tar, then uploaded; the TOC's annotations go on the layer descriptor."""
    out = tar.with_suffix(".tar.zst")

    def compress() -> SeekableResult:
        with tar.open("rb") as src, out.open("wb") as dst:
            return write_chunked(src, dst, digest_output=False)

    try:
        done = await run_sync(compress)
        up = await upload_stream(client, dest.repository, _file_body(out), progress=progress)
    finally:
        await run_io(out.unlink, True)
    blob = Descriptor("", up.digest, up.size, None, done.annotations or None)
    return UploadedLayer(blob, done.diff_id, done.uncompressed_size)


def _file_body(path: Path) -> Body:
    """The compressed file as a replayable upload body: a fresh read per attempt."""

    @asynccontextmanager
    async def body() -> AsyncIterator[AsyncIterable[bytes]]:
        yield _pieces(path)

    return body


async def _pieces(path: Path) -> AsyncIterator[bytes]:
    f = await run_io(path.open, "rb")
    try:
        while piece := await run_io(f.read, PIECE):
            yield piece
    finally:
        await run_io(f.close)


def _new_image(child: Child, layer: UploadedLayer, kind: str, options: CommitOptions) -> NewImage:
    mtype = child.manifest.media_type
    base_layers = list(child.manifest.layers)
    if kind == "zstd" and mtype != mutate.to_oci(mtype):  # zstd has no Docker media type
        mtype = mutate.to_oci(mtype)
        base_layers = [_retyped(d, mtype) for d in base_layers]
    kind_type = mutate.layer_type_for(mtype, kind)
    blob = Descriptor(kind_type, layer.blob.digest, layer.blob.size, None, layer.blob.annotations)
    created_by = CREATED_BY + (f" -m {options.message}" if options.message else "")
    new = mutate.NewLayer(blob, layer.diff_id, created_by, options.message or None)
    config = mutate.append_layers(child.config.data, [new])
    return NewImage(mtype, config, [*base_layers, blob], None, manifest_annotations(child))


def _retyped(d: Descriptor, manifest_type: str) -> Descriptor:
    media_type = mutate.convert_layer_type(d.media_type, manifest_type)
    return Descriptor(media_type, d.digest, d.size, d.platform, d.annotations, d.urls)
